//! The `load` and `report` commands: options, orchestration (Kafka, store, the mock in-process) and output.

use std::path::PathBuf;
use std::sync::Arc;

use crate::actors::pipeline::Pipeline;
use crate::config::{Settings, redact};
use crate::kafka::embedded::EmbeddedBroker;
use crate::load::gate::{Gate, GateError, Verdict};
use crate::load::message::{Mix, Template};
use crate::load::profile::Profile;
use crate::load::{self, LoadError, LoadSettings, Result};
use crate::scenario::Scenario;
use crate::store::Store;

/// The store at `url`, migrated; an error names the URL without its password.
async fn open_store(url: &str) -> Result<Store> {
    Store::connect(url, 2).await.map_err(|source| LoadError::OpenStore { url: redact(url), source })
}

/// Exit code for bad usage or config (as for the other commands).
pub const USAGE_EXIT: u8 = 2;

fn config_error(e: impl std::fmt::Display) -> u8 {
    eprintln!("error: {e}");
    USAGE_EXIT
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// A summary for people.
    Text,
    /// The summary as JSON.
    Json,
    /// One row per message and status: the record for your own analysis.
    Csv,
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// The run id; omit to list the latest runs.
    pub run: Option<String>,
    /// What to print on standard output.
    #[arg(long, default_value = "text")]
    pub format: OutputFormat,
    /// Also write the HTML report (self-contained, with charts) to this file.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// A gate, e.g. `p99(DELIVERY) < 5s`, `rate(BOUNCE) <= 5%`, `lost == 0`; repeat for more.
    #[arg(long = "gate")]
    pub gates: Vec<String>,
    /// Post the run's summary and gates here as Slack-compatible JSON (a Slack incoming webhook takes it
    /// as is).
    #[arg(long, env = "UNDERSTUDY_NOTIFY_URL", value_parser = load::notify::parse_url, hide_env_values = true)]
    pub notify: Option<String>,
}

#[derive(clap::Args)]
pub struct LoadArgs {
    /// Target messages per second (with `--duration`).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// How long to send at `--rate`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: std::time::Duration,
    /// A rate profile instead of `--rate`/`--duration`: `0..2000@30s,2000@2m,2000..0@30s` (ramps, plateaus,
    /// steps, pauses; `/min` and `/h` rates: `0..120000/min@5m` is a KPI ramp).
    #[arg(long)]
    pub profile: Option<String>,
    /// Send at most this many messages.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Messages per batch (one batch id each).
    #[arg(long, default_value_t = 1000)]
    pub batch_size: u64,
    /// Send at most this many batches.
    #[arg(long)]
    pub batches: Option<u64>,
    /// Pause between batches (the profile's clock stops meanwhile).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub batch_gap: std::time::Duration,
    /// Channel shares.
    #[arg(long, default_value = "email=0.5,sms=0.3,whatsapp=0.2")]
    pub mix: String,
    /// Tenant id of every message.
    #[arg(long, default_value = "load")]
    pub tenant: String,
    /// Pad each body to this many bytes (the template's `{{padding}}`).
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,
    /// A body template file in the platform's own format, with `{{payload_id}}`, `{{batch_id}}`,
    /// `{{channel}}`, `{{recipient}}`, `{{tenant_id}}`, `{{run_id}}`, `{{seq}}`, `{{padding}}`.
    #[arg(long)]
    pub template: Option<PathBuf>,
    /// A file of recipients, one `CHANNEL ADDRESS` a line: a channel's messages go to its listed addresses
    /// in turn (e.g. addresses your scenario or platform treats specially) instead of generated ones.
    #[arg(long)]
    pub recipients: Option<PathBuf>,
    /// Topic to send to (default: the mock's first input topic): the mock's, or the platform's own input.
    #[arg(long)]
    pub topic: Option<String>,
    /// Topic to correlate (default: the mock's ack topic), or the platform's own status topic.
    #[arg(long)]
    pub ack_topic: Option<String>,
    /// JSON pointer to the payload id in an ack.
    #[arg(long, default_value = "/payload_id")]
    pub ack_payload_id: String,
    /// JSON pointer to the status in an ack.
    #[arg(long, default_value = "/status")]
    pub ack_status: String,
    /// Run id (default: a new one). Generator processes of one run share it.
    #[arg(long)]
    pub run_id: Option<String>,
    /// This process's number within the run; each process of a run needs its own.
    #[arg(long, default_value_t = 0)]
    pub generator: u32,
    /// The run's generator processes in all. Generator 0 waits for the others' parts (`--wait-for-parts`),
    /// then prints, gates and notifies the merged run; the others print their own part and leave gates and
    /// notification to it. Without it, each process gates and notifies its own part.
    #[arg(long)]
    pub generators: Option<u32>,
    /// With `--generators`: how long generator 0 waits for the other parts once its own is stored.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub wait_for_parts: std::time::Duration,
    /// Post the finished run's summary and gates here as Slack-compatible JSON (a Slack incoming webhook
    /// takes it as is). From the environment, it stays off the process's command line.
    #[arg(long, env = "UNDERSTUDY_NOTIFY_URL", value_parser = load::notify::parse_url, hide_env_values = true)]
    pub notify: Option<String>,
    /// Check the options, gates and settings, print what the run would do, and exit without sending.
    #[arg(long)]
    pub dry_run: bool,
    /// After the last send, wait this long for outcomes; payloads without one are lost.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub ack_timeout: std::time::Duration,
    /// Once every payload has its outcome, keep listening this long (for OPEN, CLICK, READ).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub linger: std::time::Duration,
    /// A send more than this behind its intended time counts as late.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    pub late_after: std::time::Duration,
    /// A gate, e.g. `p99(DELIVERY) < 5s`, `rate(BOUNCE) <= 5%`, `lost == 0`; repeat for more.
    #[arg(long = "gate")]
    pub gates: Vec<String>,
    /// What to print on standard output at the end.
    #[arg(long, default_value = "text")]
    pub format: OutputFormat,
    /// Also write the HTML report (self-contained, with charts) to this file.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Progress as one JSON object a second on standard error (`{"progress": {"sent": …}}`) instead of the
    /// bar: for programs that follow a run (the control API does).
    #[arg(long)]
    pub progress_json: bool,
    /// Run the mock vendor in this process too (on the embedded broker unless brokers are set).
    #[arg(long)]
    pub mock: bool,
    /// With `--mock`: compress the scenario's timelines by this factor.
    #[arg(long)]
    pub time_scale: Option<f64>,
    /// Send through a vendor's front door (`twilio`, `whatsapp`, `sendgrid`, `ses`) instead of Kafka, and
    /// receive its webhooks here: signatures checked, statuses correlated.
    #[arg(long, value_parser = parse_vendor)]
    pub door: Option<crate::wire::Vendor>,
    /// The doors' base URL (default: the mock's, with `--mock`; else `http.listen_addr`).
    #[arg(long)]
    pub door_url: Option<String>,
    /// Where this process receives the vendor's webhooks.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub receiver: std::net::SocketAddr,
    /// The receiver's URL as the doors reach it (default: `http://` and the address it listens on).
    #[arg(long)]
    pub receiver_url: Option<String>,
    /// With `--door`: send calls under way at once, at most (keep-alive connections).
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
}

fn parse_vendor(s: &str) -> Result<crate::wire::Vendor, String> {
    use crate::wire::Vendor;
    Vendor::ALL
        .into_iter()
        .find(|v| v.as_str() == s)
        .ok_or_else(|| format!("`{s}` is no door: twilio, whatsapp, sendgrid or ses"))
}

/// The `--mix` default.
const DEFAULT_MIX: &str = "email=0.5,sms=0.3,whatsapp=0.2";

/// An address to reach a listener at: its own, or loopback for an unspecified one.
fn local(a: std::net::SocketAddr) -> std::net::SocketAddr {
    match a.ip().is_unspecified() {
        true => std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), a.port()),
        false => a,
    }
}

/// What a run through a door sends with and checks webhooks against: the settings' first account, token
/// or key of each vendor (doors with none configured take any). With the in-process mock and no SendGrid
/// signing key, one is made for both sides.
fn door_credentials(settings: &mut Settings, vendor: crate::wire::Vendor, mock: bool) -> load::door::Credentials {
    use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
    let http = &mut settings.http;
    if mock && http.sendgrid.signing_key_pem.is_none() {
        let key = loop {
            if let Ok(k) = p256::ecdsa::SigningKey::from_bytes(&rand::random::<[u8; 32]>().into()) {
                break k;
            }
        };
        http.sendgrid.signing_key_pem = key.to_pkcs8_pem(Default::default()).ok().map(|p| p.to_string());
    }
    let sendgrid_key = http
        .sendgrid
        .signing_key_pem
        .as_deref()
        .and_then(|pem| p256::ecdsa::SigningKey::from_pkcs8_pem(pem).ok())
        .map(|k| *k.verifying_key());
    let twilio = http.twilio.accounts.first();
    let aws = http.ses.credentials.first();
    load::door::Credentials {
        twilio_account: twilio.map_or_else(|| format!("AC{}", "0".repeat(32)), |a| a.sid.clone()),
        twilio_token: twilio.map_or_else(String::new, |a| a.auth_token.clone()),
        bearer: match vendor {
            crate::wire::Vendor::Whatsapp => http.whatsapp.access_tokens.first().cloned(),
            crate::wire::Vendor::Sendgrid => http.sendgrid.api_keys.first().cloned(),
            _ => None,
        }
        .unwrap_or_else(|| "understudy-load".into()),
        phone_number_id: "106540352242922".into(),
        aws_key: aws.map_or_else(|| "AKIAUNDERSTUDYLOAD00".into(), |c| c.access_key_id.clone()),
        aws_secret: aws.map_or_else(String::new, |c| c.secret_access_key.clone()),
        meta_app_secret: http.whatsapp.app_secret.clone(),
        meta_verify_token: http.whatsapp.verify_token.clone(),
        sendgrid_key,
    }
}

pub fn parse_gates(texts: &[String]) -> Result<Vec<Gate>, GateError> {
    texts.iter().map(|g| g.parse()).collect()
}

/// `understudy load`: the exit code is 0, or [`load::GATE_FAILED_EXIT`] when a gate failed.
/// `broker`: where the embedded broker of `--mock` is left, for the caller to stop after everything else
/// (stopped first, it would have the Kafka clients still winding down log that it went away).
pub async fn load(mut settings: Settings, args: LoadArgs, broker: &mut Option<EmbeddedBroker>) -> Result<u8> {
    let gates = match parse_gates(&args.gates) {
        Ok(g) => g,
        Err(e) => return Ok(config_error(e)),
    };
    let template = match &args.template {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(LoadError::file("reading the template", path))?;
            match text.parse::<Template>() {
                Ok(t) => (t, Some(text)),
                Err(e) => return Ok(config_error(format!("{}: {e}", path.display()))),
            }
        }
        None => (Template::default(), None),
    };
    for (flag, pointer) in [("--ack-payload-id", &args.ack_payload_id), ("--ack-status", &args.ack_status)] {
        if !pointer.starts_with('/') {
            return Ok(config_error(format!(
                "{flag} `{pointer}` is not a JSON pointer; write it like `/payload_id` or `/meta/id`"
            )));
        }
    }
    if let Some(id) = &args.run_id {
        if !load::is_run_id(id) {
            return Ok(config_error(format!("--run-id `{id}`: use letters, digits, `.`, `_` and `-` only")));
        }
    }
    if let Some(n) = args.generators
        && args.generator >= n
    {
        return Ok(config_error(format!(
            "--generator {} is not one of the run's {n} generators (--generators {n}: 0 to {})",
            args.generator,
            n.saturating_sub(1)
        )));
    }
    // In a run of several generators, generator 0 gates and notifies the merged run.
    let merges = args.generators.is_some_and(|n| n > 1) && args.generator == 0;
    let part_only = args.generators.is_some_and(|n| n > 1) && args.generator != 0;
    if args.tenant.contains(['"', '\\', ',']) {
        return Ok(config_error(format!("--tenant `{}` holds a quote, backslash or comma", args.tenant)));
    }
    let recipients = match &args.recipients {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(LoadError::file("reading the recipients", path))?;
            match load::message::parse_recipients(&path.display().to_string(), &text) {
                Ok(r) => r,
                Err(e) => return Ok(config_error(e)),
            }
        }
        None => Default::default(),
    };
    let profile = args.profile.clone().unwrap_or_else(|| Profile::constant(args.rate, args.duration).to_string());
    if let Err(e) = profile.parse::<Profile>() {
        return Ok(config_error(e));
    }
    // Through a door: the mix is of its channels (its own by default).
    let mut mix = args.mix.clone();
    if let Some(vendor) = args.door {
        let allowed = load::door::channels(vendor);
        if mix == DEFAULT_MIX {
            mix = format!("{}=1", allowed[0].as_str());
        }
        if let Ok(m) = mix.parse::<Mix>()
            && let Some(c) = crate::model::Channel::ALL.into_iter().find(|c| m.share(*c) > 0.0 && !allowed.contains(c))
        {
            let names: Vec<&str> = allowed.iter().map(|c| c.as_str()).collect();
            return Ok(config_error(format!(
                "--door {}: its door takes {} messages, not {c}; set --mix accordingly",
                vendor.as_str(),
                names.join(" and ")
            )));
        }
        if vendor == crate::wire::Vendor::Ses && args.run_id.as_deref().is_some_and(|id| id.contains('.')) {
            return Ok(config_error("--door ses: the run id names each message in an EmailTag, which takes no `.`"));
        }
        if args.concurrency == 0 {
            return Ok(config_error("--concurrency must be at least 1"));
        }
    }
    if let Err(e) = mix.parse::<Mix>() {
        return Ok(config_error(e));
    }
    let max_messages = match (args.messages, args.batches) {
        (Some(m), Some(b)) => Some(m.min(b * args.batch_size)),
        (m, b) => m.or(b.map(|b| b * args.batch_size)),
    };
    let run_id = args.run_id.clone().unwrap_or_else(load::new_run_id);
    // With the mock on the embedded broker, the run gets its own topics and consumer group: the broker's
    // memory starts empty each time while the store remembers the topic offsets of earlier runs, which the
    // mock would take for messages it already has.
    let embedded_mock = args.mock && settings.kafka.brokers.is_none();
    if embedded_mock {
        settings.kafka.dlq_topic = format!("understudy.{run_id}.dlq");
        settings.kafka.group_id = format!("understudy-{run_id}");
    }
    let mut load_settings = LoadSettings {
        run_id: run_id.clone(),
        generator: args.generator,
        profile,
        max_messages,
        batch_size: args.batch_size.max(1),
        batch_gap_ms: args.batch_gap.as_millis() as u64,
        mix: mix.clone(),
        tenant_id: args.tenant.clone(),
        payload_bytes: args.payload_bytes,
        template: template.1,
        recipients,
        topic: args.topic.clone().unwrap_or_else(|| {
            if embedded_mock { format!("understudy.{run_id}.outbound") } else { settings.kafka.input_topics[0].clone() }
        }),
        ack_topic: args.ack_topic.clone().unwrap_or_else(|| {
            if embedded_mock { format!("understudy.{run_id}.acks") } else { settings.kafka.ack_topic.clone() }
        }),
        ack_payload_id: args.ack_payload_id.clone(),
        ack_status: args.ack_status.clone(),
        ack_timeout_ms: args.ack_timeout.as_millis() as u64,
        linger_ms: args.linger.as_millis() as u64,
        late_after_ms: args.late_after.as_secs_f64() * 1000.0,
    };

    if args.dry_run {
        let generators = args.generators.unwrap_or(1);
        println!("run {run_id}: generator {} of {generators}", args.generator);
        println!("  profile    {}", load_settings.profile);
        println!("  mix        {}", load_settings.mix);
        match args.door {
            Some(vendor) => println!("  to         the {} door, webhooks to this process", vendor.as_str()),
            None => println!("  to         {} (acks from {})", load_settings.topic, load_settings.ack_topic),
        }
        for g in &gates {
            println!("  gate       {g}{}", if part_only { " (checked by generator 0)" } else { "" });
        }
        if let Some(url) = &args.notify {
            let who = if part_only { " (by generator 0)" } else { "" };
            println!("  notify     {}{who}", load::notify::redact_url(url));
        }
        return Ok(0);
    }
    // Kafka: configured, or (with --mock) the embedded broker. A run through a door needs none unless it
    // runs the mock.
    let brokers = match (&settings.kafka.brokers, args.mock) {
        (Some(b), _) => b.clone(),
        (None, true) => broker.insert(EmbeddedBroker::start(settings.kafka.embedded_port)?).bootstrap(),
        (None, false) if args.door.is_some() => String::new(),
        (None, false) => {
            return Ok(config_error(
                "no Kafka to send to: set `kafka.brokers` (or --brokers), or pass --mock to run the mock vendor in this process",
            ));
        }
    };
    // Through a door: the webhook receiver first, so that the mock's doors can be pointed at it.
    let door = match args.door {
        Some(vendor) => {
            let credentials = door_credentials(&mut settings, vendor, args.mock);
            let (tx, rx) = std::sync::mpsc::channel();
            let receiver =
                load::door::Receiver::start(args.receiver, args.receiver_url.clone(), credentials.clone(), tx)
                    .map_err(LoadError::io(format!("listening for webhooks on {}", args.receiver)))?;
            let url = format!("{}{}", receiver.public_url(), load::door::webhook_path(vendor));
            if args.mock {
                settings.http.listen_addr.get_or_insert_with(|| "127.0.0.1:0".parse().expect("an address"));
                match vendor {
                    crate::wire::Vendor::Whatsapp => settings.http.whatsapp.webhook_url = Some(url),
                    crate::wire::Vendor::Sendgrid => settings.http.sendgrid.webhook_url = Some(url),
                    crate::wire::Vendor::Ses => settings.http.ses.webhook_url = Some(url),
                    crate::wire::Vendor::Twilio => {}
                }
            }
            if vendor == crate::wire::Vendor::Sendgrid && credentials.sendgrid_key.is_none() {
                eprintln!(
                    "warning: SendGrid's webhooks are not checked: set `http.sendgrid.signing_key_pem` to the key they are signed with"
                );
            }
            Some((vendor, receiver, rx, credentials))
        }
        None => None,
    };
    if args.door.is_none() && settings.kafka.create_topics {
        crate::kafka::admin::ensure_topics(
            &settings.kafka,
            &brokers,
            &[&load_settings.topic, &load_settings.ack_topic],
        )
        .await?;
    }
    let url = settings.store.url_or_default();
    let store = open_store(&url).await?;
    // Generator 0 merges what the store holds under the run id: parts already there ended before it began,
    // so they belong to an earlier run under the same id.
    if merges {
        let earlier: std::collections::BTreeSet<i32> =
            store.run_parts(&run_id).await?.iter().map(|p| p.generator).collect();
        if !earlier.is_empty() {
            let names: Vec<String> = earlier.iter().map(i32::to_string).collect();
            store.close().await;
            return Ok(config_error(format!(
                "run `{run_id}` already holds parts (generators {}) from an earlier run: give each run its own --run-id",
                names.join(", ")
            )));
        }
    }

    let mut door_url = args
        .door_url
        .clone()
        .or_else(|| (!args.mock).then(|| settings.http.listen_addr.map(|a| format!("http://{}", local(a)))).flatten());
    // The scenario: run by the in-process mock, or named for the record.
    let scenario_text = std::fs::read_to_string(&settings.scenario.path).ok();
    let pipeline = if args.mock {
        let scenario = match Scenario::load(&settings.scenario.path) {
            Ok(s) => s,
            Err(e) => return Ok(config_error(e)),
        };
        let scenario = match args.time_scale {
            Some(t) => scenario.rescaled(t)?,
            None => scenario,
        };
        if load_settings.topic != settings.kafka.input_topics[0] {
            settings.kafka.input_topics = vec![load_settings.topic.clone()];
        }
        settings.kafka.ack_topic = load_settings.ack_topic.clone();
        let pipeline = Pipeline::start(&settings, Arc::new(scenario), &brokers).await?;
        if let Some(addr) = pipeline.http_addr()
            && door_url.is_none()
        {
            door_url = Some(format!("http://{addr}"));
        }
        // The first sends would otherwise wait for the mock's consumer to join its group, and their
        // latency would measure the join.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while pipeline.owned_partitions() < settings.kafka.partitions.max(1) as usize {
            if std::time::Instant::now() > deadline {
                eprintln!(
                    "warning: the mock owns {} partitions after 30 s; starting anyway",
                    pipeline.owned_partitions()
                );
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Some(pipeline)
    } else {
        None
    };

    let progress = match (args.progress_json, args.quiet) {
        (true, _) => load::Progress::Json,
        (false, true) => load::Progress::Quiet,
        (false, false) => load::Progress::Bar,
    };
    let (transport, receiver) = match door {
        Some((vendor, receiver, observed, credentials)) => {
            let Some(url) = door_url else {
                return Ok(config_error(
                    "--door: no doors to send to: give --door-url, set `http.listen_addr`, or pass --mock",
                ));
            };
            load_settings.topic = format!("{} door at {url}", vendor.as_str());
            load_settings.ack_topic = format!("webhooks at {}", receiver.public_url());
            let target = load::door::DoorTarget {
                vendor,
                url,
                receiver_url: receiver.public_url(),
                credentials,
                concurrency: args.concurrency,
            };
            (load::Transport::Door { target: Box::new(target), observed }, Some(receiver))
        }
        None => (load::Transport::Kafka { kafka: &settings.kafka, brokers: &brokers }, None),
    };
    if args.format == OutputFormat::Text && !args.quiet {
        eprintln!(
            "run {run_id}: {} to {} (acks from {})",
            load_settings.profile, load_settings.topic, load_settings.ack_topic
        );
    }
    let part_gates: &[Gate] = if part_only { &[] } else { &gates };
    let outcome = load::run(transport, load_settings, template.0.clone(), part_gates, progress).await;
    let outcome = outcome.map(|mut o| {
        if let (Some(r), Some(h)) = (&receiver, o.results.http.as_mut()) {
            (h.bad_signatures, h.unreadable) = r.refused();
        }
        o
    });

    let mocked = pipeline.as_ref().map(Pipeline::scenario);
    if let Some(p) = pipeline {
        p.shutdown().await;
    }
    // After the mock: its webhooks still under way at the end are received (and no longer counted).
    if let Some(r) = &receiver {
        r.stop().await;
    }
    let mut outcome = outcome?;
    // Lost payloads the scenario's own faults explain (a dropped or corrupted final ack), told apart from
    // real losses. The scenario is the one the mock ran, or the one the settings name.
    // (Not through a door: the door numbers its messages itself, so the run cannot plan them again.)
    if outcome.results.lost > 0
        && outcome.results.http.is_none()
        && let Some(scenario) = mocked.or_else(|| Scenario::load(&settings.scenario.path).ok().map(Arc::new))
    {
        load::explain_lost(&mut outcome, template.0, &scenario, &settings.input, part_gates)?;
    }
    if let Err(e) = load::save(&store, &outcome, scenario_text).await {
        // The figures are not lost with the store: print them, then report the failure.
        let summary = load::report::summary(&run_id, 1, &outcome.results, &outcome.verdicts);
        eprint!("{}", load::report::text(&summary));
        return Err(LoadError::Save(Box::new(e)));
    }
    // What is printed is what was stored: this process's part (`report` merges the parts of a run), or,
    // for generator 0 of several, the merged run once the other parts are in.
    let (run, verdicts, missing) = if merges {
        let n = args.generators.unwrap_or(1);
        let (run, missing) = wait_for_parts(&store, &run_id, n, args.wait_for_parts).await?;
        let verdicts: Vec<Verdict> = gates.iter().map(|g| g.check(&run.results)).collect();
        (run, verdicts, missing)
    } else {
        (load::load_parts(&store, &run_id, Some(args.generator)).await?, outcome.verdicts.clone(), Vec::new())
    };
    let code = output(&store, &run, &verdicts, args.format, args.html.as_deref()).await;
    store.close().await;
    if let Some(url) = args.notify.as_deref().filter(|_| !part_only) {
        let summary = load::report::summary(&run.run_id, run.generators, &run.results, &verdicts);
        load::notify::post(url, &load::notify::message(&summary, &missing)).await;
    }
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(u32::to_string).collect();
        return Err(LoadError::MissingParts { run_id, generators: names.join(", "), wait: args.wait_for_parts });
    }
    code
}

/// Generator 0 of a run of `n`: wait until every generator's part is stored, or `wait` passed; the merged
/// run and the generators still missing.
async fn wait_for_parts(
    store: &Store,
    run_id: &str,
    n: u32,
    wait: std::time::Duration,
) -> Result<(load::StoredRun, Vec<u32>)> {
    let deadline = std::time::Instant::now() + wait;
    let mut told = false;
    loop {
        let stored: std::collections::BTreeSet<i32> =
            store.run_parts(run_id).await?.iter().map(|p| p.generator).collect();
        let missing: Vec<u32> = (0..n).filter(|g| !stored.contains(&(*g as i32))).collect();
        if missing.is_empty() || std::time::Instant::now() >= deadline {
            return Ok((load::load(store, run_id).await?, missing));
        }
        if !told {
            eprintln!(
                "run {run_id}: part 0 stored; waiting up to {} for {} more of {n} generators",
                humantime::format_duration(wait),
                missing.len()
            );
            told = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Print a run in `format`, write its HTML report if asked, and choose the exit code from the gates.
async fn output(
    store: &Store,
    run: &load::StoredRun,
    verdicts: &[Verdict],
    format: OutputFormat,
    html: Option<&std::path::Path>,
) -> Result<u8> {
    let summary = load::report::summary(&run.run_id, run.generators, &run.results, verdicts);
    let mut events =
        if format == OutputFormat::Csv || html.is_some() { store.run_events(&run.run_id).await? } else { Vec::new() };
    if let Some(g) = run.only_generator {
        events.retain(|e| e.generator == g as i32);
    }
    match format {
        OutputFormat::Text => print!("{}", load::report::text(&summary)),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&summary)?),
        OutputFormat::Csv => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let written = load::report::csv(run, &events, &mut out).and_then(|()| std::io::Write::flush(&mut out));
            // A reader that stops early (`| head`) is not an error.
            match written {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    return Err(LoadError::Io { what: "writing the CSV".into(), source: e });
                }
                _ => {}
            }
        }
    }
    if let Some(path) = html {
        std::fs::write(path, load::html::render(run, &events, verdicts))
            .map_err(LoadError::file("writing the HTML report to", path))?;
        if format == OutputFormat::Text {
            println!("  report    {}", path.display());
        }
    }
    if summary.passed {
        Ok(0)
    } else {
        if format == OutputFormat::Text {
            eprintln!("error: {} of {} gates failed", verdicts.iter().filter(|v| !v.passed).count(), verdicts.len());
        }
        Ok(load::GATE_FAILED_EXIT)
    }
}

pub async fn report(settings: &Settings, args: ReportArgs) -> Result<u8> {
    let gates = match parse_gates(&args.gates) {
        Ok(g) => g,
        Err(e) => return Ok(config_error(e)),
    };
    let url = settings.store.url_or_default();
    let store = open_store(&url).await?;
    let Some(run_id) = args.run else {
        let runs = store.list_runs(50).await?;
        if runs.is_empty() {
            println!("no load runs in {}", redact(&url));
        }
        for r in runs {
            let start = crate::model::micros_to_time(r.started_at_us);
            let secs = (r.ended_at_us - r.started_at_us) as f64 / 1e6;
            println!(
                "{}  {}  {:.0} s  {} generator(s)",
                r.run_id,
                start.format("%Y-%m-%d %H:%M:%S"),
                secs,
                r.generators
            );
        }
        store.close().await;
        return Ok(0);
    };
    let run = load::load(&store, &run_id).await?;
    let verdicts: Vec<_> = gates.iter().map(|g| g.check(&run.results)).collect();
    let code = output(&store, &run, &verdicts, args.format, args.html.as_deref()).await;
    store.close().await;
    if let Some(url) = &args.notify {
        let summary = load::report::summary(&run.run_id, run.generators, &run.results, &verdicts);
        load::notify::post(url, &load::notify::message(&summary, &[])).await;
    }
    code
}

#[derive(clap::Args)]
pub struct CompareArgs {
    /// The baseline run.
    pub run_a: String,
    /// The run judged against it.
    pub run_b: String,
    /// Differences smaller than this share of A's value are noise (`5%` or `0.05`).
    #[arg(long, default_value = "5%", value_parser = load::gate::parse_share)]
    pub noise: f64,
    /// `text` or `json` (csv is not offered here).
    #[arg(long, default_value = "text")]
    pub format: OutputFormat,
    /// Exit with code 3 when anything regressed.
    #[arg(long)]
    pub fail_on_regression: bool,
}

pub async fn compare(settings: &Settings, args: CompareArgs) -> Result<u8> {
    if args.format == OutputFormat::Csv {
        return Ok(config_error("compare prints `text` or `json`"));
    }
    let url = settings.store.url_or_default();
    let store = open_store(&url).await?;
    let a = load::load(&store, &args.run_a).await?;
    let b = load::load(&store, &args.run_b).await?;
    let (ea, eb) = (store.run_events(&a.run_id).await?, store.run_events(&b.run_id).await?);
    store.close().await;
    let c = load::compare::compare(&a, &ea, &b, &eb, args.noise);
    match args.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&c)?),
        _ => print!("{}", load::compare::text(&c)),
    }
    if args.fail_on_regression && c.regressed() {
        if args.format == OutputFormat::Text {
            eprintln!("error: B regressed against A");
        }
        return Ok(load::GATE_FAILED_EXIT);
    }
    Ok(0)
}
