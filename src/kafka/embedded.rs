//! The embedded broker: tansu with in-memory storage on a loopback port, so that Understudy runs with
//! nothing else installed. Any other Kafka is reached by setting `kafka.brokers`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use tansu_broker::broker::Broker;
use tansu_broker::coordinator::group::administrator::Controller;
use tansu_storage::StorageContainer;
use url::Url;

use super::{KafkaError, Result};

/// A running in-process broker. Dropping it stops the broker.
pub struct EmbeddedBroker {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker").field("addr", &self.addr).finish()
    }
}

impl EmbeddedBroker {
    /// Start a broker on `127.0.0.1:port` (`0` = a free port) on a runtime of its own and wait until it
    /// accepts connections.
    pub fn start(port: u16) -> Result<Self> {
        let port = if port == 0 { free_port()? } else { port };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tansu-broker")
            .enable_all()
            .build()
            .map_err(|e| KafkaError::Embedded(e.to_string()))?;
        let listener = Url::parse(&format!("tcp://{addr}")).expect("valid url");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        runtime.spawn(async move {
            let built = Broker::<Controller<StorageContainer>, StorageContainer>::builder()
                .node_id(tansu_broker::NODE_ID)
                .cluster_id("understudy")
                .incarnation_id(uuid::Uuid::new_v4())
                .advertised_listener(listener.clone())
                .storage(Url::parse("memory://tansu/").expect("valid url"))
                .listener(listener)
                .silent(true)
                .build()
                .await;
            match built {
                Ok(mut broker) => {
                    if let Err(e) = broker.serve(tokio::time::Instant::now()).await {
                        let _ = tx.send(format!("{e:?}"));
                    }
                }
                Err(e) => {
                    let _ = tx.send(format!("{e:?}"));
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(err) = rx.try_recv() {
                return Err(KafkaError::Embedded(format!("broker on {addr} failed to start: {err}")));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(KafkaError::Embedded(format!("broker on {addr} did not accept connections within 20s")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::info!(%addr, "embedded broker (tansu, memory storage) is up");
        Ok(Self { addr, runtime: Some(runtime) })
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| KafkaError::Embedded(format!("no free port: {e}")))?;
    Ok(l.local_addr().map_err(|e| KafkaError::Embedded(e.to_string()))?.port())
}
