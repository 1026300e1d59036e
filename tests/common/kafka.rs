//! The brokers the integration tests run on: the embedded tansu broker (in this process, memory storage)
//! and Apache Kafka, the ground truth, started from its Maven Central jars in KRaft mode on loopback
//! ports. A test body takes a [`Kafka`] and is run once per broker by [`crate::on_both_brokers!`].
//!
//! Apache Kafka's jars (`tests/apache-kafka/pom.xml`) are resolved once with Maven into
//! `target/apache-kafka/libs`. Each broker process gets a folder under `target/apache-kafka/runs/`
//! holding its `server.properties`, its log (`server.log`) and its data; the data is removed when the
//! cluster is dropped, the logs are kept, and a cluster dropped while its test panics keeps everything.
//! Broker processes die with the test process (`PR_SET_PDEATHSIG`), however it ends.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

/// Which broker a test body runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kafka {
    /// The embedded broker, one per test binary.
    Tansu,
    /// One combined broker + controller of Apache Kafka, one per test binary.
    Apache,
}

impl Kafka {
    /// Bootstrap servers of this binary's shared broker of that kind, started on first use.
    pub fn brokers(self) -> String {
        match self {
            Kafka::Tansu => {
                static BROKER: OnceLock<understudy::kafka::embedded::EmbeddedBroker> = OnceLock::new();
                BROKER
                    .get_or_init(|| {
                        understudy::kafka::embedded::EmbeddedBroker::start(0).expect("embedded broker starts")
                    })
                    .bootstrap()
            }
            Kafka::Apache => {
                static BROKER: OnceLock<String> = OnceLock::new();
                BROKER
                    .get_or_init(|| {
                        // Started and then owned by a thread that lives as long as the process: the
                        // broker is killed when the test process exits.
                        let (tx, rx) = mpsc::channel();
                        std::thread::Builder::new()
                            .name("apache-kafka".into())
                            .spawn(move || {
                                let cluster = ApacheKafka::start("shared", 1);
                                tx.send(cluster.bootstrap()).unwrap();
                                let _keep = cluster;
                                loop {
                                    std::thread::park();
                                }
                            })
                            .unwrap();
                        rx.recv().expect("Apache Kafka starts (see target/apache-kafka/runs/)")
                    })
                    .clone()
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kafka::Tansu => "tansu",
            Kafka::Apache => "apache-kafka",
        }
    }
}

/// A broker of one test's own (not the binary's shared one): to replace by a new, empty one, or to take
/// away and bring back with its storage — the embedded broker off the network, or an Apache Kafka node
/// killed (SIGKILL) and started again on its log directory.
pub enum OwnBroker {
    Tansu(understudy::kafka::embedded::EmbeddedBroker),
    Apache(ApacheKafka),
}

impl OwnBroker {
    pub fn start(k: Kafka, name: &str) -> Self {
        match k {
            Kafka::Tansu => Self::Tansu(understudy::kafka::embedded::EmbeddedBroker::start(0).unwrap()),
            Kafka::Apache => Self::Apache(ApacheKafka::start(name, 1)),
        }
    }

    pub fn bootstrap(&self) -> String {
        match self {
            Self::Tansu(b) => b.bootstrap(),
            Self::Apache(b) => b.bootstrap(),
        }
    }

    pub fn stop(&mut self) {
        match self {
            Self::Tansu(b) => b.stop().unwrap(),
            Self::Apache(b) => b.kill(1),
        }
    }

    pub fn start_again(&mut self) {
        match self {
            Self::Tansu(b) => b.start_again().unwrap(),
            Self::Apache(b) => b.restart(1),
        }
    }
}

/// Run an async test body once per broker: `on_both_brokers!(actix::test, body);` makes the tests
/// `body::tansu` and `body::apache`, each calling `body(Kafka::…)`.
#[macro_export]
macro_rules! on_both_brokers {
    ($runtime:path, $($body:ident),+ $(,)?) => {
        $(
            mod $body {
                #[$runtime]
                async fn tansu() {
                    super::$body(crate::common::kafka::Kafka::Tansu).await
                }
                #[$runtime]
                async fn apache() {
                    super::$body(crate::common::kafka::Kafka::Apache).await
                }
            }
        )+
    };
}

/// The jars of Apache Kafka and its perf tools, resolved from Maven Central on first use.
pub fn apache_kafka_libs() -> PathBuf {
    static LIBS: OnceLock<PathBuf> = OnceLock::new();
    LIBS.get_or_init(|| {
        let root = apache_kafka_root();
        let libs = root.join("libs");
        let pom = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apache-kafka/pom.xml");
        let stamp = libs.join(".pom");
        let want = std::fs::read_to_string(&pom).expect("tests/apache-kafka/pom.xml");
        if std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
            return libs;
        }
        let tmp = root.join(format!("libs.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let out = Command::new("mvn")
            .args(["-q", "-B", "-f"])
            .arg(&pom)
            .args(["dependency:copy-dependencies", "-DincludeScope=runtime"])
            .arg(format!("-DoutputDirectory={}", tmp.display()))
            .output()
            .unwrap_or_else(|e| {
                panic!("Apache Kafka's jars come from Maven Central through `mvn`, which did not start: {e}")
            });
        assert!(
            out.status.success(),
            "mvn could not resolve Apache Kafka's jars ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(tmp.join(".pom"), &want).unwrap();
        let _ = std::fs::remove_dir_all(&libs);
        std::fs::rename(&tmp, &libs).expect("move the resolved jars in place");
        libs
    })
    .clone()
}

fn apache_kafka_root() -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../apache-kafka");
    std::fs::create_dir_all(&root).unwrap();
    root.canonicalize().unwrap()
}

/// `java` of `JAVA_HOME`, or the one on the path.
pub fn java() -> PathBuf {
    std::env::var_os("JAVA_HOME")
        .map(|h| PathBuf::from(h).join("bin/java"))
        .filter(|j| j.exists())
        .unwrap_or_else(|| "java".into())
}

/// A Java command with Apache Kafka's jars on the class path.
pub fn kafka_java(main_class: &str) -> Command {
    let mut cmd = Command::new(java());
    cmd.arg("-cp").arg(format!("{}/*", apache_kafka_libs().display())).arg(main_class);
    cmd
}

/// The one user of every node's SASL listener.
pub const SASL_USER: &str = "understudy";
pub const SASL_PASSWORD: &str = "understudy-secret";

/// An Apache Kafka cluster of `n` nodes, each a combined broker and KRaft controller, each with a
/// PLAINTEXT listener and a SASL_PLAINTEXT one.
pub struct ApacheKafka {
    dir: PathBuf,
    nodes: Vec<Node>,
}

struct Node {
    id: u32,
    port: u16,
    /// A SASL_PLAINTEXT listener (mechanism PLAIN, one user: [`SASL_USER`]).
    sasl_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl ApacheKafka {
    /// Format and start `n` nodes on free loopback ports; returns once every broker is in the metadata.
    /// With 3 nodes, topics default to replication factor 3 and `min.insync.replicas` 2.
    pub fn start(name: &str, n: u32) -> Self {
        let libs = apache_kafka_libs();
        let runs = apache_kafka_root().join("runs");
        prune_runs(&runs);
        let exe = std::env::current_exe().ok().and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()));
        let dir =
            runs.join(format!("{}-{name}-{}-{}", exe.unwrap_or_default(), std::process::id(), crate::common::suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let ports: Vec<(u16, u16, u16)> = (0..n).map(|_| (free_port(), free_port(), free_port())).collect();
        let voters: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, c, _))| format!("{}@127.0.0.1:{c}", i + 1)).collect();
        let replicas = n.min(3);
        let min_isr = if n >= 3 { 2 } else { 1 };
        let cluster_id = uuid_base64();
        let mut nodes = Vec::new();
        for (i, (port, controller, sasl_port)) in ports.iter().enumerate() {
            let id = i as u32 + 1;
            let node_dir = dir.join(format!("node-{id}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let props = format!(
                "process.roles=broker,controller\n\
                 node.id={id}\n\
                 controller.quorum.voters={voters}\n\
                 listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller},SASL://127.0.0.1:{sasl_port}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{port},SASL://127.0.0.1:{sasl_port}\n\
                 controller.listener.names=CONTROLLER\n\
                 listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL:SASL_PLAINTEXT\n\
                 sasl.enabled.mechanisms=PLAIN\n\
                 listener.name.sasl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule \
                 required user_{SASL_USER}=\"{SASL_PASSWORD}\";\n\
                 inter.broker.listener.name=PLAINTEXT\n\
                 log.dirs={data}\n\
                 default.replication.factor={replicas}\n\
                 min.insync.replicas={min_isr}\n\
                 offsets.topic.replication.factor={replicas}\n\
                 offsets.topic.num.partitions=10\n\
                 transaction.state.log.replication.factor={replicas}\n\
                 transaction.state.log.min.isr={min_isr}\n\
                 share.coordinator.state.topic.replication.factor={replicas}\n\
                 share.coordinator.state.topic.min.isr={min_isr}\n\
                 group.initial.rebalance.delay.ms=0\n",
                voters = voters.join(","),
                data = node_dir.join("data").display(),
            );
            std::fs::write(node_dir.join("server.properties"), props).unwrap();
            std::fs::write(
                node_dir.join("log4j2.properties"),
                format!(
                    "status = error\n\
                     appender.f.type = File\n\
                     appender.f.name = F\n\
                     appender.f.fileName = {log}\n\
                     appender.f.layout.type = PatternLayout\n\
                     appender.f.layout.pattern = [%d] %p %m (%c)%n\n\
                     rootLogger.level = INFO\n\
                     rootLogger.appenderRef.f.ref = F\n\
                     logger.kafka.name = kafka\n\
                     logger.kafka.level = INFO\n",
                    log = node_dir.join("server.log").display()
                ),
            )
            .unwrap();
            let out = Command::new(java())
                .arg("-cp")
                .arg(format!("{}/*", libs.display()))
                .arg(format!("-Dlog4j2.configurationFile={}", node_dir.join("log4j2.properties").display()))
                .args([
                    "kafka.tools.StorageTool",
                    "format",
                    "--ignore-formatted",
                    &format!("--cluster-id={cluster_id}"),
                    "-c",
                ])
                .arg(node_dir.join("server.properties"))
                .output()
                .expect("java starts");
            assert!(
                out.status.success(),
                "formatting node {id}'s storage failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            nodes.push(Node { id, port: *port, sasl_port: *sasl_port, dir: node_dir, child: None });
        }
        let mut cluster = Self { dir, nodes };
        for id in 1..=n {
            cluster.spawn(id);
        }
        cluster.wait_until_up(Duration::from_secs(90));
        cluster
    }

    /// `bootstrap.servers` for every node.
    pub fn bootstrap(&self) -> String {
        self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    /// `bootstrap.servers` of every node's SASL_PLAINTEXT listener (PLAIN, [`SASL_USER`] and
    /// [`SASL_PASSWORD`]).
    pub fn sasl_bootstrap(&self) -> String {
        self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.sasl_port)).collect::<Vec<_>>().join(",")
    }

    pub fn node_ids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// SIGKILL one node: no controlled shutdown, no leadership handover.
    pub fn kill(&mut self, id: u32) {
        let node = self.node(id);
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        wait_closed(node.port);
    }

    /// SIGTERM one node and wait for its controlled shutdown.
    pub fn stop(&mut self, id: u32) {
        let node = self.node(id);
        if let Some(mut child) = node.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(60);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        wait_closed(node.port);
    }

    /// Start a stopped or killed node again on its port and storage; returns once it is back in the
    /// cluster's metadata.
    pub fn restart(&mut self, id: u32) {
        self.spawn(id);
        self.wait_until_up(Duration::from_secs(90));
    }

    /// Wait until every replica of every partition is in sync again (no under-replicated partition), as
    /// an operator waits between the steps of a rolling operation.
    pub fn wait_in_sync(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(md) = self.try_metadata(None) {
                let lagging: usize = md
                    .topics()
                    .iter()
                    .flat_map(|t| t.partitions())
                    .filter(|p| p.isr().len() < p.replicas().len())
                    .count();
                if lagging == 0 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "partitions still under-replicated after {within:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The node leading `topic`'s `partition`.
    pub fn leader_of(&self, topic: &str, partition: i32) -> u32 {
        let md = self.metadata(Some(topic));
        let t = md.topics().iter().find(|t| t.name() == topic).expect("topic in metadata");
        let p = t.partitions().iter().find(|p| p.id() == partition).expect("partition in metadata");
        p.leader() as u32
    }

    /// The cluster's folder under `target/apache-kafka/runs/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn node(&mut self, id: u32) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap_or_else(|| panic!("no node {id}"))
    }

    fn spawn(&mut self, id: u32) {
        let libs = apache_kafka_libs();
        let node = self.node(id);
        assert!(node.child.is_none(), "node {id} is running");
        let mut cmd = Command::new(java());
        cmd.args(["-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true"])
            .arg(format!("-Dlog4j2.configurationFile={}", node.dir.join("log4j2.properties").display()))
            .arg(format!("-Dkafka.logs.dir={}", node.dir.display()))
            .arg("-cp")
            .arg(format!("{}/*", libs.display()))
            .arg("kafka.Kafka")
            .arg(node.dir.join("server.properties"))
            .stdin(Stdio::null())
            .stdout(log_file(&node.dir.join("stdout.log")))
            .stderr(log_file(&node.dir.join("stdout.log")));
        node.child = Some(spawn_kept(cmd));
    }

    fn wait_until_up(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        let running: Vec<u16> = self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.port).collect();
        loop {
            for node in &mut self.nodes {
                if let Some(child) = &mut node.child
                    && let Some(status) = child.try_wait().unwrap()
                {
                    panic!(
                        "Apache Kafka node {} exited ({status}) while starting; its log:\n{}",
                        node.id,
                        format!("{}{}", tail(&node.dir.join("server.log"), 40), tail(&node.dir.join("stdout.log"), 40))
                    );
                }
            }
            if running
                .iter()
                .all(|p| TcpStream::connect_timeout(&([127, 0, 0, 1], *p).into(), Duration::from_millis(200)).is_ok())
                && self.try_metadata(None).is_some_and(|md| md.brokers().len() == running.len())
            {
                return;
            }
            assert!(Instant::now() < deadline, "Apache Kafka not up within {within:?}; logs in {}", self.dir.display());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn metadata(&self, topic: Option<&str>) -> rdkafka::metadata::Metadata {
        self.try_metadata(topic).expect("metadata from Apache Kafka")
    }

    fn try_metadata(&self, topic: Option<&str>) -> Option<rdkafka::metadata::Metadata> {
        let running: Vec<String> =
            self.nodes.iter().filter(|n| n.child.is_some()).map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", running.join(","))
            .set("log_level", "0")
            .create()
            .ok()?;
        consumer.fetch_metadata(topic, Duration::from_secs(5)).ok()
    }
}

impl Drop for ApacheKafka {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            if !std::thread::panicking() {
                let _ = std::fs::remove_dir_all(node.dir.join("data"));
            }
        }
    }
}

/// Keep the last 30 clusters' folders; of older ones only their logs.
fn prune_runs(runs: &Path) {
    let Ok(entries) = std::fs::read_dir(runs) else {
        return;
    };
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> =
        entries.filter_map(|e| e.ok()).filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path()))).collect();
    dirs.sort();
    let old = dirs.len().saturating_sub(30);
    for (_, dir) in dirs.into_iter().take(old) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n") + "\n"
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_closed(port: u16) {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A KRaft cluster id: 16 random bytes, URL-safe base64 without padding, not starting with `-` (as
/// `kafka-storage random-uuid`: such an id would read as an option on a command line).
fn uuid_base64() -> String {
    loop {
        let id = uuid_base64_once();
        if !id.starts_with('-') {
            return id;
        }
    }
}

fn uuid_base64_once() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = String::new();
    for b in bytes {
        bits = (bits << 8) | b as u32;
        n += 8;
        while n >= 6 {
            n -= 6;
            out.push(ALPHABET[((bits >> n) & 63) as usize] as char);
        }
    }
    if n > 0 {
        out.push(ALPHABET[((bits << (6 - n)) & 63) as usize] as char);
    }
    out
}

/// Spawn `cmd` from one thread that lives as long as the process, with `PR_SET_PDEATHSIG` = SIGKILL: the
/// child dies with the test process, however it ends (the signal follows the thread that forked it).
pub fn spawn_kept(cmd: Command) -> Child {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("child-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    use std::os::unix::process::CommandExt;
                    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
                    unsafe {
                        cmd.pre_exec(|| {
                            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .unwrap();
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    spawner.lock().unwrap().send((cmd, tx)).unwrap();
    rx.recv().unwrap().expect("the child process starts")
}
