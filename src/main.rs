//! The `understudy` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use understudy::actors::pipeline::Pipeline;
use understudy::config::{Overrides, Settings, redact};
use understudy::kafka::embedded::EmbeddedBroker;
use understudy::load;
use understudy::load::cli::{CompareArgs, LoadArgs, ReportArgs};
use understudy::scenario::Scenario;
use understudy::store::Store;
use understudy::{demo, telemetry};

/// mimalloc: cheaper cross-thread frees (events are allocated on channel arbiters and freed on the
/// producer and persister threads) and less fragmentation than the system allocator's per-thread arenas.
/// Its `override` feature makes it the C allocator too, so librdkafka's per-message allocations use it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}
/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e`.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Keep freed memory for 10 s before giving it back to the OS (mimalloc's default is 1 s). Under load the
/// service frees and reuses memory at a steady rate; handing it back after 1 s of rest made every reuse a
/// fresh page fault, which on a virtual machine costs as much as the work itself (about 30,000 faults and
/// a tenth of the service's CPU in the throughput benchmark). `MIMALLOC_PURGE_DELAY` still wins.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain option value; mimalloc reads it on its next purge.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 10_000) };
    }
}

#[derive(Parser)]
#[command(name = "understudy", version, about = "A stand-in for Email, SMS and WhatsApp vendors on Kafka")]
struct Cli {
    /// Config file (default: `understudy.yaml` if present).
    #[arg(long, global = true, env = "UNDERSTUDY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone, Default)]
struct Common {
    /// Kafka bootstrap servers; unset starts an embedded broker.
    #[arg(long)]
    brokers: Option<String>,
    /// `postgres://…` or `sqlite://…`; unset uses SQLite.
    #[arg(long)]
    database_url: Option<String>,
    /// Scenario file.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Prometheus exporter address, e.g. `0.0.0.0:9464`.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Consumer group id.
    #[arg(long)]
    group_id: Option<String>,
}

impl Common {
    fn overrides(&self) -> Overrides {
        Overrides {
            brokers: self.brokers.clone(),
            database_url: self.database_url.clone(),
            scenario: self.scenario.clone(),
            metrics_addr: self.metrics_addr,
            group_id: self.group_id.clone(),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the mock vendor service until SIGTERM or SIGINT.
    Run(Common),
    /// Publish a sample batch on embedded defaults, run it to the end and print what happened.
    Demo {
        #[command(flatten)]
        common: Common,
        /// Messages to publish, spread over email, SMS and WhatsApp.
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        /// Compress the scenario's timelines by this factor (0.0001: an hour becomes 0.36 s).
        #[arg(long, default_value_t = 0.0001)]
        time_scale: f64,
    },
    /// Send load on a schedule, correlate the acks, store and print the run; gates set the exit code.
    Load {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: Box<LoadArgs>,
    },
    /// Print a stored load run (merging its generator processes), or list the runs without RUN.
    Report {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: ReportArgs,
    },
    /// Compare two stored load runs: latency percentiles with confidence intervals, a Mann-Whitney U test,
    /// throughput and loss, with a verdict for each.
    Compare {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: CompareArgs,
    },
    /// Work with scenario files.
    Scenario {
        #[command(subcommand)]
        command: ScenarioCommand,
    },
    /// Check the configuration (file, environment and flags, as `run` would layer them) and its scenario,
    /// and print the effective settings, secrets hidden. Exit 2 on an error, as `run` would.
    Check {
        #[command(flatten)]
        common: Common,
        /// Also reach Kafka (its brokers and the topics `run` needs) and the Postgres store; exit 1 if
        /// either cannot be reached within 10 s.
        #[arg(long)]
        connect: bool,
    },
    /// Run only the embedded broker (tansu, memory storage), for other processes to use.
    Broker {
        /// Port on 127.0.0.1.
        #[arg(long, default_value_t = 9092)]
        port: u16,
    },
}

#[derive(Subcommand)]
enum ScenarioCommand {
    /// Validate scenario files and print a summary of each.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also say which rule of each file catches this sample message (a JSON file).
        #[arg(long)]
        message: Option<PathBuf>,
        /// A header of the sample message, `name=value`; repeat for more.
        #[arg(long = "header", value_name = "NAME=VALUE")]
        headers: Vec<String>,
    },
    /// Print the planned lifecycle of one sample message (a JSON file, as the platform would send it):
    /// the rule that chose it, the path, and every ack with its due time.
    Explain {
        file: PathBuf,
        message: PathBuf,
        /// A header of the sample message, `name=value`; repeat for more.
        #[arg(long = "header", value_name = "NAME=VALUE")]
        headers: Vec<String>,
        /// Receipt time of the message (RFC 3339); default now.
        #[arg(long)]
        at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Print the JSON Schema of scenario files (the one in `scenarios/schema.json`).
    Schema,
    /// Write a scenario fitted to recorded vendor events: a CSV with `payload_id`, `status`, `timestamp`
    /// (RFC 3339 or Unix seconds/ms) and `channel` columns, optionally `sent_at`. Prints how well each
    /// delay fits.
    Calibrate {
        events: PathBuf,
        /// Write the scenario here (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Delays as the data's own quantiles instead of fitted lognormals.
        #[arg(long)]
        empirical: bool,
        #[arg(long, default_value = "calibrated")]
        name: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// The sample message of `scenario check --message` and `scenario explain`, with its headers.
fn sample(path: &std::path::Path, headers: &[String]) -> Result<(Vec<u8>, Vec<(String, String)>), String> {
    let body = std::fs::read(path).map_err(|e| format!("{}: cannot read the message: {e}", path.display()))?;
    let headers = headers
        .iter()
        .map(|h| {
            h.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
                .ok_or_else(|| format!("--header `{h}`: write it as NAME=VALUE"))
        })
        .collect::<Result<_, _>>()?;
    Ok((body, headers))
}

fn scenario_command(config: Option<&std::path::Path>, command: ScenarioCommand) -> ExitCode {
    use understudy::scenario::explain::explain;
    // The input settings say how messages are decoded (field pointers, tenant header).
    let settings = || Settings::load(config, &Overrides::default());
    match command {
        ScenarioCommand::Check { files, message, headers } => {
            let sample = match message.as_deref().map(|m| sample(m, &headers)).transpose() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let settings = match sample.is_some().then(settings).transpose() {
                Ok(s) => s,
                Err(e) => return config_error(e),
            };
            let mut ok = true;
            for f in files {
                match Scenario::load(&f) {
                    Ok(s) => {
                        println!("{}", s.summary());
                        if let (Some((body, headers)), Some(settings)) = (&sample, &settings) {
                            let topic = &settings.kafka.input_topics[0];
                            match explain(&s, &settings.input, topic, body, headers, chrono::Utc::now()) {
                                Ok(x) => println!("  sample message: {}\n", x.decided_by(&s)),
                                Err(e) => println!("  sample message: {e}\n"),
                            }
                        }
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        ok = false;
                    }
                }
            }
            if ok { ExitCode::SUCCESS } else { ExitCode::from(2) }
        }
        ScenarioCommand::Explain { file, message, headers, at } => {
            let scenario = match Scenario::load(&file) {
                Ok(s) => s,
                Err(e) => return config_error(e),
            };
            let settings = match settings() {
                Ok(s) => s,
                Err(e) => return config_error(e),
            };
            let (body, headers) = match sample(&message, &headers) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let topic = &settings.kafka.input_topics[0];
            match explain(&scenario, &settings.input, topic, &body, &headers, at.unwrap_or_else(chrono::Utc::now)) {
                Ok(x) => {
                    print!("{}", x.render(&scenario));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {}: {e}", message.display());
                    ExitCode::FAILURE
                }
            }
        }
        ScenarioCommand::Calibrate { events, out, empirical, name, seed } => {
            use understudy::scenario::calibrate::{calibrate, read_csv};
            let input = match read_csv(&events) {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            for (why, n) in &input.skipped {
                eprintln!("skipped {n} rows: {why}");
            }
            let c = calibrate(&input, &name, seed, empirical);
            let yaml = match serde_yaml::to_string(&c.file) {
                Ok(y) => y,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // What is written must load.
            if let Err(e) = Scenario::parse(&yaml, out.as_deref().unwrap_or(std::path::Path::new("calibrated.yaml"))) {
                eprintln!("error: the calibrated scenario does not validate: {e}");
                return ExitCode::FAILURE;
            }
            match &out {
                Some(path) => {
                    if let Err(e) = std::fs::write(path, &yaml) {
                        eprintln!("error: {}: {e}", path.display());
                        return ExitCode::FAILURE;
                    }
                    eprintln!("wrote {}", path.display());
                }
                None => print!("{yaml}"),
            }
            eprint!("{}", c.report());
            ExitCode::SUCCESS
        }
        ScenarioCommand::Schema => {
            println!("{}", understudy::scenario::json_schema());
            ExitCode::SUCCESS
        }
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    match cli.command {
        Command::Scenario { command } => scenario_command(cli.config.as_deref(), command),
        Command::Broker { port } => {
            telemetry::init_tracing(&Default::default());
            report(broker(port))
        }
        Command::Check { common, connect } => {
            let (settings, scenario) = match settings_and_scenario(cli.config.as_deref(), &common) {
                Ok(loaded) => loaded,
                Err(code) => return code,
            };
            print!("{}", settings.effective());
            println!("# scenario {}: version {}", settings.scenario.path.display(), scenario.version());
            if !connect {
                return ExitCode::SUCCESS;
            }
            let reached = tokio::runtime::Runtime::new()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(reach(&settings)));
            match reached {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}", understudy::error::chain(e.as_ref()));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(common) => {
            let (settings, scenario) = match settings_and_scenario(cli.config.as_deref(), &common) {
                Ok(loaded) => loaded,
                Err(code) => return code,
            };
            telemetry::init_tracing(&settings.telemetry);
            report(actix::System::new().block_on(run(settings, scenario)))
        }
        Command::Load { common, args } => {
            let settings = match Settings::load(cli.config.as_deref(), &common.overrides()) {
                Ok(s) => s,
                Err(e) => return config_error(e),
            };
            let mut telemetry = settings.telemetry.clone();
            if std::env::var_os("RUST_LOG").is_none() {
                telemetry.log_level = "warn".into();
            }
            telemetry::init_tracing(&telemetry);
            let mut broker = None;
            let code = actix::System::new().block_on(load::cli::load(settings, *args, &mut broker));
            // After the actor system: its Kafka clients are gone by now.
            drop(broker);
            exit(code)
        }
        Command::Report { common, args } => {
            let settings = match Settings::load(cli.config.as_deref(), &common.overrides()) {
                Ok(s) => s,
                Err(e) => return config_error(e),
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            exit(rt.block_on(load::cli::report(&settings, args)))
        }
        Command::Compare { common, args } => {
            let settings = match Settings::load(cli.config.as_deref(), &common.overrides()) {
                Ok(s) => s,
                Err(e) => return config_error(e),
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            exit(rt.block_on(load::cli::compare(&settings, args)))
        }
        Command::Demo { common, messages, time_scale } => {
            let mut settings = match Settings::load(cli.config.as_deref(), &common.overrides()) {
                Ok(s) => s,
                Err(e) => return config_error(e),
            };
            if std::env::var_os("RUST_LOG").is_none() && common.metrics_addr.is_none() {
                settings.telemetry.log_level = "warn".into();
            }
            telemetry::init_tracing(&settings.telemetry);
            let opts = demo::DemoOptions { messages, time_scale, scenario: common.scenario.clone() };
            report(actix::System::new().block_on(demo::run(settings, opts)).map_err(anyhow::Error::from))
        }
    }
}

/// The settings as `run` layers them, and their scenario; an error is printed and becomes exit 2.
fn settings_and_scenario(config: Option<&std::path::Path>, common: &Common) -> Result<(Settings, Scenario), ExitCode> {
    let settings = Settings::load(config, &common.overrides()).map_err(config_error)?;
    let scenario = Scenario::load(&settings.scenario.path).map_err(config_error)?;
    Ok((settings, scenario))
}

fn config_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
}

/// An exit code chosen by the command (gates, usage), or 1 for an error.
fn exit<E: std::error::Error + 'static>(r: Result<u8, E>) -> ExitCode {
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", understudy::error::chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", understudy::error::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn broker(port: u16) -> anyhow::Result<()> {
    let b = EmbeddedBroker::start(port)?;
    println!("embedded broker listening on {}", b.bootstrap());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(shutdown_signal());
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `check --connect`: reach Kafka and the store as `run` would, and print what was found.
async fn reach(settings: &Settings) -> anyhow::Result<()> {
    const WAIT: std::time::Duration = std::time::Duration::from_secs(10);
    let k = &settings.kafka;
    match &k.brokers {
        None => println!("# kafka: none configured; `run` starts the embedded broker"),
        Some(brokers) => {
            let found = understudy::kafka::admin::preflight(k, brokers, WAIT).await?;
            println!("# kafka: {} broker(s) at {brokers}", found.brokers);
            for (name, partitions) in &found.topics {
                match partitions {
                    Some(p) => println!("#   topic {name}: {p} partitions"),
                    None => println!("#   topic {name}: missing; `run` creates it"),
                }
            }
        }
    }
    let url = settings.store.url_or_default();
    match Store::connect_lazy(&url, 1)? {
        store @ Store::Postgres(_) => {
            let version = tokio::time::timeout(WAIT, store.schema_version())
                .await
                .map_err(|_| anyhow::anyhow!("the store at {} did not answer within {WAIT:?}", redact(&url)))?
                .map_err(|e| anyhow::anyhow!("cannot reach the store at {}: {e}", redact(&url)))?;
            match version {
                Some(v) => println!("# store: Postgres at {}, schema version {v}", redact(&url)),
                None => println!("# store: Postgres at {}, empty; `run` creates the tables", redact(&url)),
            }
            store.close().await;
        }
        Store::Sqlite(_) => {
            let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
            let state = if std::path::Path::new(path).exists() { "exists" } else { "missing; `run` creates it" };
            println!("# store: SQLite file {path} ({state})");
        }
    }
    Ok(())
}

async fn run(settings: Settings, scenario: Scenario) -> anyhow::Result<()> {
    // Nothing starts on a cluster `run` could not work with: each refusal names the setting to fix.
    if let Some(brokers) = &settings.kafka.brokers {
        understudy::kafka::admin::preflight(&settings.kafka, brokers, std::time::Duration::from_secs(10)).await?;
    }
    if let Some(addr) = settings.telemetry.metrics_addr {
        telemetry::init_metrics(addr)?;
        tracing::info!(%addr, "metrics exporter listening");
    }
    let (_broker, brokers) = match &settings.kafka.brokers {
        Some(b) => (None, b.clone()),
        None => {
            let b = EmbeddedBroker::start(settings.kafka.embedded_port)?;
            let addr = b.bootstrap();
            (Some(b), addr)
        }
    };
    let url = settings.store.url_or_default();
    let store = Store::connect(&url, 2).await.with_context(|| format!("opening the store at {}", redact(&url)))?;
    tracing::info!(store = %redact(&url), brokers = %brokers, scenario = %scenario.name(), "starting");
    let pipeline = Pipeline::start(&settings, Arc::new(scenario), &brokers).await?;
    // A stage that stops on its own fails the service: what is left is shut down (its rows written, its
    // offsets committed) and the process exits non-zero, for the orchestrator to restart it.
    let health = pipeline.health().clone();
    let failed = tokio::select! {
        _ = shutdown_signal() => None,
        reason = health.failed() => Some(reason),
    };
    tracing::info!("shutting down");
    pipeline.shutdown().await;
    store.close().await;
    match failed {
        None => Ok(()),
        Some(reason) => Err(anyhow::anyhow!("{reason}; exiting so that the service is restarted")),
    }
}

#[cfg(test)]
mod tests {
    unsafe extern "C" {
        fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
    }

    /// The option index is mimalloc's: its purge delay defaults to 1000 ms (unless the environment sets it).
    #[test]
    fn purge_delay_option_is_the_one_set() {
        let expected = std::env::var("MIMALLOC_PURGE_DELAY").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
        assert_eq!(unsafe { mi_option_get(super::MI_OPTION_PURGE_DELAY) }, expected);
        super::tune_allocator();
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(unsafe { mi_option_get(super::MI_OPTION_PURGE_DELAY) }, 10_000);
        }
    }
}
