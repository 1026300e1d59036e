//! The embedded broker: tansu with in-memory storage on a loopback port, so that Understudy runs with
//! nothing else installed. Any other Kafka is reached by setting `kafka.brokers`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tansu_broker::broker::Broker;
use tansu_broker::coordinator::group::administrator::Controller;
use tansu_storage::StorageContainer;
use url::Url;

use super::{KafkaError, Result};

type TansuBroker = Broker<Controller<StorageContainer>, StorageContainer>;

/// A running in-process broker. Dropping it stops the broker.
///
/// [`EmbeddedBroker::stop`] and [`EmbeddedBroker::start_again`] take it off the network and bring it
/// back with its storage (topics, records, committed offsets, groups) intact, as a broker with durable
/// storage restarts: the fault tests use them for a real broker outage.
pub struct EmbeddedBroker {
    addr: SocketAddr,
    broker: Arc<TansuBroker>,
    /// The task accepting and serving connections; aborting it closes the listener and every connection.
    serving: Option<tokio::task::JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker").field("addr", &self.addr).field("serving", &self.serving.is_some()).finish()
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
        // Built on the broker's runtime and handed back over a channel: `start` may itself be called from
        // within a runtime, where blocking on another one is not allowed.
        let (tx, rx) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            let built = Broker::<Controller<StorageContainer>, StorageContainer>::builder()
                .node_id(tansu_broker::NODE_ID)
                // A cluster of its own at each start: its memory storage starts empty, so the store must not
                // take its offsets for those of an earlier start (messages are keyed by cluster and topic id).
                .cluster_id(format!("understudy-{}", uuid::Uuid::new_v4().simple()))
                .incarnation_id(uuid::Uuid::new_v4())
                .advertised_listener(listener.clone())
                .storage(Url::parse("memory://tansu/").expect("valid url"))
                .listener(listener)
                .silent(true)
                .build()
                .await;
            let registered = match built {
                Ok(mut broker) => broker.register().await.map(|()| broker),
                Err(e) => Err(e),
            };
            let _ = tx.send(registered.map_err(|e| format!("{e:?}")));
        });
        let broker = rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| KafkaError::Embedded(format!("broker on {addr} was not built within 20s")))?
            .map_err(|e| KafkaError::Embedded(format!("broker on {addr} failed to start: {e}")))?;
        let mut this = Self { addr, broker: Arc::new(broker), serving: None, runtime: Some(runtime) };
        this.start_again()?;
        tracing::info!(%addr, "embedded broker (tansu, memory storage) is up");
        Ok(this)
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// Take the broker off the network: close its listener and drop every connection. Its storage stays.
    /// Returns once the port refuses connections.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(serving) = self.serving.take() {
            serving.abort();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
            if Instant::now() > deadline {
                return Err(KafkaError::Embedded(format!(
                    "broker on {} still accepts connections after stop",
                    self.addr
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::info!(addr = %self.addr, "embedded broker stopped");
        Ok(())
    }

    /// Serve again on the same port with the same storage (after [`EmbeddedBroker::stop`]); returns once
    /// the port accepts connections.
    pub fn start_again(&mut self) -> Result<()> {
        if self.serving.is_some() {
            return Ok(());
        }
        let runtime = self.runtime.as_ref().expect("runtime lives as long as the broker");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let broker = self.broker.clone();
            let (tx, rx) = std::sync::mpsc::channel::<String>();
            let serving = runtime.spawn(async move {
                if let Err(e) = broker.listen(tokio::time::Instant::now()).await {
                    let _ = tx.send(format!("{e:?}"));
                }
            });
            // The port of a listener just closed can take a moment to be free again.
            loop {
                if let Ok(err) = rx.try_recv() {
                    if Instant::now() > deadline {
                        return Err(KafkaError::Embedded(format!("broker on {} failed to listen: {err}", self.addr)));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
                if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                    self.serving = Some(serving);
                    return Ok(());
                }
                if Instant::now() > deadline {
                    serving.abort();
                    return Err(KafkaError::Embedded(format!(
                        "broker on {} did not accept connections within 20s",
                        self.addr
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
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
