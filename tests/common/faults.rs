//! Fault-test tools: the real binary as a child process, a TCP link that can be cut or slowed, a
//! Prometheus scrape, and the end-of-run check that nothing was lost or stored twice.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::AbortHandle;
use understudy::demo::read_topic;
use understudy::store::Store;

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `understudy run` as a child process, its log appended to one file across restarts.
pub struct Service {
    child: Child,
    config: PathBuf,
    scenario: PathBuf,
    log: PathBuf,
    /// Highest peak RSS (VmHWM) seen over every incarnation, in KiB.
    peak_rss_kib: u64,
}

impl Service {
    pub fn spawn(config: &Path, scenario: &Path, log: &Path) -> Self {
        let mut s = Self {
            child: spawn_child(config, scenario, log),
            config: config.to_owned(),
            scenario: scenario.to_owned(),
            log: log.to_owned(),
            peak_rss_kib: 0,
        };
        s.sample_rss();
        s
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no flush, no commit.
    pub fn kill(&mut self) {
        self.sample_rss();
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn restart(&mut self) {
        self.child = spawn_child(&self.config, &self.scenario, &self.log);
    }

    /// Panics (with the log) if the process has exited.
    pub fn assert_alive(&mut self, when: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the service exited ({status}) {when}:\n{}", self.log_text());
        }
    }

    /// SIGTERM and wait; the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.sample_rss();
        let term = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(term.success());
        self.child.wait().unwrap().code()
    }

    /// Record the process's peak resident memory so far; returns the current RSS in KiB.
    pub fn sample_rss(&mut self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        self.peak_rss_kib = self.peak_rss_kib.max(field("VmHWM:"));
        field("VmRSS:")
    }

    pub fn peak_rss_mib(&self) -> f64 {
        self.peak_rss_kib as f64 / 1024.0
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_child(config: &Path, scenario: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_understudy"))
        .args(["run", "--config"])
        .arg(config)
        .arg("--scenario")
        .arg(scenario)
        .env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the binary starts")
}

/// Sum of every sample of `name` on a Prometheus endpoint (0 when absent).
pub fn scrape(addr: SocketAddr, name: &str) -> f64 {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return 0.0 };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A TCP link in front of a server (Postgres, say) that a test can cut — listener closed, every open
/// connection dropped — restore, or slow down. It runs on a thread of its own so that it keeps
/// forwarding while the test blocks.
pub struct Link {
    addr: SocketAddr,
    target: SocketAddr,
    state: Arc<LinkState>,
    runtime: Option<tokio::runtime::Runtime>,
}

#[derive(Default)]
struct LinkState {
    accept: Mutex<Option<AbortHandle>>,
    connections: Mutex<Vec<AbortHandle>>,
    /// Bytes per second per connection and direction; 0 = unlimited.
    rate: AtomicU64,
}

impl Link {
    pub fn start(target: SocketAddr) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let link = Self { addr, target, state: Arc::default(), runtime: Some(runtime) };
        link.restore();
        link
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Refuse new connections and drop the open ones.
    pub fn cut(&self) {
        if let Some(a) = self.state.accept.lock().unwrap().take() {
            a.abort();
        }
        for c in self.state.connections.lock().unwrap().drain(..) {
            c.abort();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok() {
            assert!(Instant::now() < deadline, "link still accepts after the cut");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Accept and forward again.
    pub fn restore(&self) {
        let mut accept = self.state.accept.lock().unwrap();
        if accept.is_some() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot listen on {} again: {e}", self.addr);
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        let (state, target) = (self.state.clone(), self.target);
        *accept = Some(
            self.runtime
                .as_ref()
                .expect("runtime lives as long as the link")
                .spawn(async move {
                    listener.set_nonblocking(true).unwrap();
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    while let Ok((inbound, _)) = listener.accept().await {
                        let st = state.clone();
                        let task = tokio::spawn(async move {
                            let Ok(outbound) = tokio::net::TcpStream::connect(target).await else { return };
                            let _ = inbound.set_nodelay(true);
                            let _ = outbound.set_nodelay(true);
                            let (ri, wi) = inbound.into_split();
                            let (ro, wo) = outbound.into_split();
                            tokio::select! {
                                _ = pump(ri, wo, st.clone()) => {}
                                _ = pump(ro, wi, st) => {}
                            }
                        });
                        let mut conns = state.connections.lock().unwrap();
                        conns.retain(|c| !c.is_finished());
                        conns.push(task.abort_handle());
                    }
                })
                .abort_handle(),
        );
    }

    /// Limit each direction of each connection to `bytes_per_sec` (0 = unlimited).
    pub fn throttle(&self, bytes_per_sec: u64) {
        self.state.rate.store(bytes_per_sec, Ordering::Relaxed);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(a) = self.state.accept.lock().unwrap().take() {
            a.abort();
        }
        for c in self.state.connections.lock().unwrap().drain(..) {
            c.abort();
        }
        // Dropped from a test's async context: no blocking shutdown.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<LinkState>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let rate = state.rate.load(Ordering::Relaxed);
        // Small reads when throttled, so that the pace is even.
        let cap = if rate == 0 { buf.len() } else { (rate as usize / 20).clamp(64, buf.len()) };
        let n = match from.read(&mut buf[..cap]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if rate > 0 {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Postgres's address, from `DATABASE_URL` or the default.
pub fn postgres_addr() -> SocketAddr {
    let base = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let url = url::Url::parse(&base).unwrap();
    use std::net::ToSocketAddrs;
    (url.host_str().unwrap(), url.port().unwrap_or(5432)).to_socket_addrs().unwrap().next().unwrap()
}

/// `url` (a Postgres URL) pointed at `addr` instead.
pub fn via(url: &str, addr: SocketAddr) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.set_host(Some(&addr.ip().to_string())).unwrap();
    u.set_port(Some(addr.port())).unwrap();
    u.to_string()
}

/// What the end-of-run check found.
#[derive(Debug)]
pub struct Outcome {
    pub messages: i64,
    pub events: i64,
    pub acks_in_kafka: usize,
    pub kafka_duplicates: usize,
}

impl Outcome {
    /// The check's findings as the fault tests' `FIGURES` lines give them.
    pub fn summary(&self) -> String {
        format!(
            "{} messages and {} events stored, 0 missing, 0 duplicate rows; {} acks in Kafka, {} duplicates, all \
             with known event ids",
            self.messages, self.events, self.acks_in_kafka, self.kafka_duplicates
        )
    }
}

/// Wait until the store holds `events` events, or fail with `what` and the service log.
pub async fn wait_for_events(store: &Store, events: usize, within: Duration, service: &mut Service) {
    let deadline = Instant::now() + within;
    loop {
        let t = store.totals().await.unwrap();
        if t.events as usize >= events {
            return;
        }
        service.assert_alive("before every event was stored");
        if Instant::now() > deadline {
            panic!(
                "not finished after {within:?}: {} of {events} events, {} messages, {} unfinished\n{}",
                t.events,
                t.messages,
                store.unfinished_count().await.unwrap(),
                service.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The nothing-lost check, from the store and the ack topic: every message stored once, every planned
/// event stored once, no unfinished lifecycle, every stored event in Kafka, and every ack in Kafka — a
/// duplicate included — carrying an event id the store has.
pub async fn check_nothing_lost(
    store: &Store,
    brokers: &str,
    ack_topic: &str,
    messages: usize,
    events: usize,
) -> Outcome {
    let totals = store.totals().await.unwrap();
    assert_eq!(totals.messages as usize, messages, "every message stored exactly once");
    assert_eq!(totals.events as usize, events, "every planned event stored exactly once");
    assert_eq!(store.unfinished_count().await.unwrap(), 0, "no unfinished lifecycle");
    // Duplicates are possible, so read until the topic goes quiet rather than up to a count.
    let (brokers, topic) = (brokers.to_owned(), ack_topic.to_owned());
    let acks =
        tokio::task::spawn_blocking(move || read_topic(&brokers, &topic, usize::MAX, Duration::from_secs(5)).unwrap())
            .await
            .unwrap();
    let mut ids: HashMap<Vec<u8>, usize> = HashMap::new();
    for r in &acks {
        let id = r
            .headers
            .iter()
            .find(|(h, _)| h == "understudy-event-id")
            .map(|(_, v)| v.clone())
            .expect("event id header");
        *ids.entry(id).or_default() += 1;
    }
    let stored: HashSet<Vec<u8>> = store.all_event_ids().await.unwrap().into_iter().map(String::into_bytes).collect();
    let in_kafka: HashSet<Vec<u8>> = ids.keys().cloned().collect();
    let missing = stored.difference(&in_kafka).count();
    let unknown = in_kafka.difference(&stored).count();
    assert_eq!((missing, unknown), (0, 0), "stored events missing from Kafka, acks in Kafka not stored");
    Outcome {
        messages: totals.messages,
        events: totals.events,
        acks_in_kafka: acks.len(),
        kafka_duplicates: ids.values().map(|c| c - 1).sum(),
    }
}
