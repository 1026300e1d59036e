//! Settings, layered: `understudy.yaml` (or `--config FILE`) → environment (`UNDERSTUDY__SECTION__KEY`)
//! → command-line flags. Everything is validated before any actor starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::Channel;
use crate::scenario::locate;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read the config file: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{file}:{line}: `{field}`: {message}")]
    Invalid { file: String, line: usize, field: String, message: String },
    #[error("environment: {0} (variables are named like `UNDERSTUDY__KAFKA__BROKERS`)")]
    Environment(String),
    #[error("`{field}`: {message}")]
    Value { field: String, message: String },
}

pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// All settings. Every section has defaults, so an empty file is a valid file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub input: InputSettings,
    pub store: StoreSettings,
    pub scenario: ScenarioSettings,
    pub telemetry: TelemetrySettings,
    pub service: ServiceSettings,
    pub http: HttpSettings,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// Bootstrap servers (`host:port,host:port`). Unset: an embedded broker is started in-process.
    pub brokers: Option<String>,
    /// Consumer group of the service; replicas share it and split the partitions.
    pub group_id: String,
    /// Static group membership (`group.instance.id`): a stable name per replica, such as the pod name of
    /// a StatefulSet. A restarted replica then takes its partitions back at once instead of after the
    /// killed one's session times out. Unset: dynamic membership.
    pub group_instance_id: Option<String>,
    /// The platform's outbound topics to consume.
    pub input_topics: Vec<String>,
    /// Where ack events are produced.
    pub ack_topic: String,
    /// Where undecodable input goes, untouched, with the reason in the `understudy-dlq-reason` header.
    pub dlq_topic: String,
    /// Create missing topics at start-up.
    pub create_topics: bool,
    /// Partitions of topics Understudy creates.
    pub partitions: i32,
    /// Replication factor of topics Understudy creates.
    pub replication_factor: i32,
    /// How often stored offsets are committed, in milliseconds.
    pub commit_interval_ms: u64,
    /// Port of the embedded broker when `brokers` is unset (0 = any free port).
    pub embedded_port: u16,
    /// Extra librdkafka properties for every client (security, tuning): `security.protocol: SASL_SSL`.
    pub librdkafka: BTreeMap<String, String>,
}

impl KafkaSettings {
    /// The topics the service reads and writes: the input topics, the ack topic and the dead-letter topic.
    pub fn service_topics(&self) -> Vec<&str> {
        self.input_topics.iter().map(String::as_str).chain([self.ack_topic.as_str(), self.dlq_topic.as_str()]).collect()
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: None,
            group_id: "understudy".into(),
            group_instance_id: None,
            input_topics: vec!["understudy.outbound".into()],
            ack_topic: "understudy.acks".into(),
            dlq_topic: "understudy.dlq".into(),
            create_topics: true,
            partitions: 6,
            replication_factor: 1,
            commit_interval_ms: 1000,
            embedded_port: 0,
            librdkafka: BTreeMap::new(),
        }
    }
}

/// What happens to a message whose payload id this instance has already taken from another position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicatePolicy {
    /// The later copy goes to the dead-letter topic (kind `duplicate_payload_id`); the first is processed.
    DeadLetter,
    /// Every copy is processed. Acks of all copies carry the same event ids, so the store holds them once
    /// and Kafka holds each copy's acks.
    Process,
}

/// Where the channel of a message comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelSource {
    /// The JSON field at `fields.channel`.
    Field,
    /// The header named by `channel_header`.
    Header,
    /// The topic, through `topic_channels`.
    Topic,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputSettings {
    /// JSON pointers to the fields Understudy reads.
    pub fields: FieldPointers,
    /// `field` (default), `header` or `topic`.
    pub channel_source: ChannelSource,
    /// Header holding the channel when `channel_source: header`.
    pub channel_header: String,
    /// Topic → channel when `channel_source: topic`.
    pub topic_channels: BTreeMap<String, Channel>,
    /// Header holding the tenant id; wins over `fields.tenant_id` when present.
    pub tenant_header: String,
    /// Headers copied from the outbound message onto every ack (case-insensitive).
    pub propagate_headers: Vec<String>,
    /// Larger messages are dead-lettered, in bytes.
    pub max_message_bytes: usize,
    /// `dead_letter` (default) or `process`: what happens to a payload id seen before.
    pub on_duplicate_payload_id: DuplicatePolicy,
    /// How many recent payload ids each instance remembers to find duplicates (about 30 bytes each);
    /// `0` turns the check off.
    pub duplicate_window: usize,
    /// Tenants this instance serves (globs, e.g. `team-a`, `qa-*`); messages of other tenants, and
    /// messages without a tenant, are skipped and committed. Empty (default): every message.
    pub tenants: Vec<String>,
}

impl Default for InputSettings {
    fn default() -> Self {
        Self {
            fields: FieldPointers::default(),
            channel_source: ChannelSource::Field,
            channel_header: "channel".into(),
            topic_channels: BTreeMap::new(),
            tenant_header: "tenant-id".into(),
            propagate_headers: [
                "tenant-id",
                "traceparent",
                "tracestate",
                "baggage",
                "correlation-id",
                "x-correlation-id",
            ]
            .map(String::from)
            .to_vec(),
            max_message_bytes: 1024 * 1024,
            on_duplicate_payload_id: DuplicatePolicy::DeadLetter,
            duplicate_window: 1_000_000,
            tenants: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FieldPointers {
    pub payload_id: String,
    pub batch_id: String,
    pub channel: String,
    pub recipient: String,
    pub tenant_id: String,
}

impl Default for FieldPointers {
    fn default() -> Self {
        Self {
            payload_id: "/payload_id".into(),
            batch_id: "/batch_id".into(),
            channel: "/channel".into(),
            recipient: "/recipient".into(),
            tenant_id: "/tenant_id".into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// `postgres://…` or `sqlite://…`. Unset: `sqlite://understudy.db`.
    pub url: Option<String>,
    /// Rows per write; a flush also happens every `flush_interval_ms`.
    pub batch_rows: usize,
    /// Longest a row waits in the buffer, in milliseconds.
    pub flush_interval_ms: u64,
    /// Connections of the writer pool.
    pub max_connections: u32,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self { url: None, batch_rows: 4000, flush_interval_ms: 100, max_connections: 4 }
    }
}

impl StoreSettings {
    pub fn url_or_default(&self) -> String {
        self.url.clone().unwrap_or_else(|| "sqlite://understudy.db".into())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScenarioSettings {
    /// The scenario file.
    pub path: PathBuf,
    /// How often the scenario file (and the files it includes) are checked for changes, which are
    /// then loaded without a restart; `0` turns reloading off.
    pub reload_interval_ms: u64,
}

impl Default for ScenarioSettings {
    fn default() -> Self {
        Self { path: PathBuf::from("scenarios/default.yaml"), reload_interval_ms: 2000 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// Prometheus exporter address; unset = no exporter.
    pub metrics_addr: Option<SocketAddr>,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// A tracing filter such as `info` or `understudy=debug,rdkafka=warn`; `RUST_LOG` wins.
    pub log_level: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            metrics_addr: Some("127.0.0.1:9464".parse().expect("valid")),
            log_format: LogFormat::Text,
            log_level: "info".into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceSettings {
    /// Messages taken from Kafka per dispatch.
    pub max_batch: usize,
    /// Lifecycles in flight above which the consumer pauses.
    pub max_in_flight_lifecycles: usize,
    /// How long shutdown waits for lifecycles due soon, in milliseconds; the rest resume on restart.
    pub shutdown_grace_ms: u64,
    /// A lifecycle whose next step is further away than this sleeps as plain data instead of as an
    /// actor, in milliseconds; 0 keeps every lifecycle an actor. At least 1000 otherwise.
    pub hibernate_after_ms: u64,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self { max_batch: 1000, max_in_flight_lifecycles: 1_000_000, shutdown_grace_ms: 2000, hibernate_after_ms: 2000 }
    }
}

/// The vendors' HTTP front doors (`src/source/http/`): off unless `listen_addr` is set.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Where the front doors listen, such as `0.0.0.0:8080`; unset = no HTTP server.
    pub listen_addr: Option<SocketAddr>,
    /// This instance's name: the messages its doors take are stored under it, and a restart under the
    /// same name resumes their lifecycles (a StatefulSet's pod name). Unset: the host name.
    pub instance: Option<String>,
    /// The largest request body, in bytes; a larger one gets 413.
    pub max_body_bytes: usize,
    /// Threads serving requests.
    pub workers: usize,
    /// Whether the acks of messages the doors took also go to the ack topic (as well as to their
    /// webhooks): what `understudy load` correlates.
    pub kafka_acks: bool,
    /// Webhook deliveries under way at once, at most; beyond that lifecycles wait.
    pub webhooks_in_flight: usize,
    /// How long a webhook receiver has to answer, in milliseconds (Twilio: 15 s).
    pub webhook_timeout_ms: u64,
    pub twilio: TwilioSettings,
    pub whatsapp: WhatsappSettings,
    pub sendgrid: SendgridSettings,
    pub ses: SesSettings,
    /// The vendors' rate limits: beyond them a send call is answered 429 the vendor's way, and nothing
    /// is taken. The first entry of the request's vendor (and tenant, when it names one) applies.
    pub rate_limits: Vec<RateLimit>,
    /// The control API's bearer token (`/api/v1/…` on this port: load runs, reports, the scenario). Unset:
    /// no control API. At least 16 characters.
    pub control_token: Option<String>,
}

/// One rate limit of the front doors: a token bucket per tenant (Twilio's account SID, WhatsApp's
/// phone-number id, the sender's domain for SendGrid and SES), refilled at `per_second`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub vendor: crate::wire::Vendor,
    /// Only this tenant; unset: every tenant, each its own bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Send calls a second (SES: recipients, as SES's maximum send rate counts them).
    pub per_second: f64,
    /// Calls at once; unset: one second's worth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<f64>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen_addr: None,
            instance: None,
            max_body_bytes: 1024 * 1024,
            workers: 1,
            kafka_acks: true,
            webhooks_in_flight: 10_000,
            webhook_timeout_ms: 15_000,
            twilio: TwilioSettings::default(),
            whatsapp: WhatsappSettings::default(),
            sendgrid: SendgridSettings::default(),
            ses: SesSettings::default(),
            rate_limits: Vec::new(),
            control_token: None,
        }
    }
}

impl HttpSettings {
    /// [`instance`](Self::instance), or the host name.
    pub fn instance_or_host(&self) -> String {
        self.instance.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "understudy".into())
        })
    }
}

/// Twilio Programmable Messaging at `/2010-04-01/Accounts/{AccountSid}/Messages.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TwilioSettings {
    /// The accounts it takes, by SID and auth token (HTTP Basic auth). Empty: any well-formed account
    /// SID, with any token.
    pub accounts: Vec<TwilioAccount>,
    /// Where a message's lifecycle key comes from: `header:<name>` (an idempotency header). Unset: a
    /// hash of the request's fields and a count.
    pub lifecycle_key: Option<LifecycleKey>,
}

/// Where a front door finds a message's lifecycle key: the request names its message, so that a
/// repeated call returns the first answer and a rerun gets the same ids, outcomes and delays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum LifecycleKey {
    /// A request header (`header:Idempotency-Key`): every door.
    Header(String),
    /// One of SendGrid's `custom_args` (`custom_arg:msg_id`), per personalization or for the request.
    CustomArg(String),
    /// One of SES's `EmailTags` (`tag:msg_id`).
    Tag(String),
    /// WhatsApp's `biz_opaque_callback_data`.
    OpaqueData,
}

impl TryFrom<String> for LifecycleKey {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let named = |kind: &str, name: &str| {
            if name.trim().is_empty() {
                Err(format!("`{kind}:` needs a name after it"))
            } else {
                Ok(name.trim().to_owned())
            }
        };
        match s.split_once(':') {
            Some(("header", n)) => Ok(Self::Header(named("header", n)?)),
            Some(("custom_arg", n)) => Ok(Self::CustomArg(named("custom_arg", n)?)),
            Some(("tag", n)) => Ok(Self::Tag(named("tag", n)?)),
            None if s == "biz_opaque_callback_data" => Ok(Self::OpaqueData),
            _ => Err(format!(
                "`{s}` is not a lifecycle key; write `header:<name>`, `custom_arg:<name>` (SendGrid), `tag:<name>` (SES) or `biz_opaque_callback_data` (WhatsApp)"
            )),
        }
    }
}

impl From<LifecycleKey> for String {
    fn from(k: LifecycleKey) -> String {
        match k {
            LifecycleKey::Header(n) => format!("header:{n}"),
            LifecycleKey::CustomArg(n) => format!("custom_arg:{n}"),
            LifecycleKey::Tag(n) => format!("tag:{n}"),
            LifecycleKey::OpaqueData => "biz_opaque_callback_data".into(),
        }
    }
}

/// SendGrid's Mail Send API at `/v3/mail/send`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SendgridSettings {
    /// API keys the door takes (Bearer). Empty: any key.
    pub api_keys: Vec<String>,
    /// Where the event webhook posts its batches; unset: none.
    pub webhook_url: Option<String>,
    /// Per tenant, where its webhooks go instead of `webhook_url`: by the sender's domain.
    pub tenant_webhook_urls: std::collections::BTreeMap<String, String>,
    /// The event webhook's signing key, a P-256 private key in PKCS#8 PEM. Unset: one made at start-up,
    /// its verification key logged.
    pub signing_key_pem: Option<String>,
    /// Where a recipient's lifecycle key comes from: `custom_arg:<name>` or `header:<name>` (with the
    /// recipient's address). Unset: a hash of the request and a count.
    pub lifecycle_key: Option<LifecycleKey>,
}

/// Amazon SES (API v2) at `/v2/email/outbound-emails`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SesSettings {
    /// The AWS credentials the door takes: requests must carry a valid SigV4 signature by one of them.
    /// Empty: signatures are not checked (any `Authorization: AWS4-HMAC-SHA256 …` is taken).
    pub credentials: Vec<AwsCredential>,
    /// Where events go (an SNS HTTP(S) subscription endpoint, or the receiver of raw or EventBridge-shaped
    /// events); unset: none.
    pub webhook_url: Option<String>,
    /// Per tenant, where its webhooks go instead of `webhook_url`: by the sender's domain.
    pub tenant_webhook_urls: std::collections::BTreeMap<String, String>,
    /// How events are delivered: `sns` (the SNS envelope, signed, after a SubscriptionConfirmation),
    /// `raw` (SNS raw message delivery: the event alone) or `eventbridge` (an EventBridge event).
    pub delivery: SesDelivery,
    /// SNS's `SignatureVersion`: 1 (SHA1withRSA, SNS's default) or 2 (SHA256withRSA).
    pub signature_version: u8,
    /// The RSA private key SNS messages are signed with, in PEM. Unset: one made at start-up. Set it when
    /// several replicas sign for one receiver: the signing certificate is then the same on all of them.
    pub signing_key_pem: Option<String>,
    /// Where the receiver reaches this instance for the signing certificate and the SubscribeURL, such
    /// as `http://understudy:8080`. Unset: the address the doors listen on.
    pub public_url: Option<String>,
    /// The topic the events are published to, as the envelopes name it.
    pub topic_arn: String,
    /// Where a recipient's lifecycle key comes from: `tag:<name>` (an EmailTag) or `header:<name>` (with
    /// the recipient's address). Unset: a hash of the request and a count.
    pub lifecycle_key: Option<LifecycleKey>,
}

impl Default for SesSettings {
    fn default() -> Self {
        Self {
            credentials: Vec::new(),
            webhook_url: None,
            tenant_webhook_urls: Default::default(),
            delivery: SesDelivery::Sns,
            signature_version: 1,
            signing_key_pem: None,
            public_url: None,
            topic_arn: "arn:aws:sns:us-east-1:123456789012:understudy-ses-events".into(),
            lifecycle_key: None,
        }
    }
}

/// Where a tenant's webhooks go: its own URL, else the vendor's.
pub fn webhook_for<'a>(
    default: &'a Option<String>,
    per_tenant: &'a std::collections::BTreeMap<String, String>,
    tenant: &str,
) -> Option<&'a str> {
    per_tenant.get(tenant).or(default.as_ref()).map(String::as_str)
}

/// How SES events reach `http.ses.webhook_url`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SesDelivery {
    #[default]
    Sns,
    Raw,
    Eventbridge,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsCredential {
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// The WhatsApp Cloud API at `/v{NN}.0/{phone-number-id}/messages`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WhatsappSettings {
    /// Bearer tokens the door takes. Empty: any token.
    pub access_tokens: Vec<String>,
    /// Where status webhooks go (the app's callback URL); unset: none.
    pub webhook_url: Option<String>,
    /// Per tenant, where its webhooks go instead of `webhook_url`: by phone-number id.
    pub tenant_webhook_urls: std::collections::BTreeMap<String, String>,
    /// The app secret webhooks are signed with (`X-Hub-Signature-256`).
    pub app_secret: String,
    /// Sent in the verification handshake (`hub.verify_token`) before the first webhook to a URL.
    pub verify_token: String,
    /// Where a message's lifecycle key comes from: `biz_opaque_callback_data` or `header:<name>`. Unset:
    /// a hash of the request and a count.
    pub lifecycle_key: Option<LifecycleKey>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioAccount {
    /// `AC` and 32 hex digits.
    pub sid: String,
    /// The account's auth token: the Basic auth password, and the key status callbacks are signed with.
    pub auth_token: String,
}

/// Command-line overrides, applied last.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub brokers: Option<String>,
    pub database_url: Option<String>,
    pub scenario: Option<PathBuf>,
    pub metrics_addr: Option<SocketAddr>,
    pub group_id: Option<String>,
}

impl Settings {
    /// Load the layers. `file`: an explicit `--config`; otherwise `understudy.yaml` if it exists.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self> {
        let default_file = Path::new("understudy.yaml");
        let file = file.or_else(|| default_file.exists().then_some(default_file));
        let mut builder = config::Config::builder();
        let mut file_text: Option<(String, String)> = None;
        if let Some(path) = file {
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: path.to_owned(), source })?;
            // Check the file alone first: its errors can then name line and field.
            Self::check_file(&text, &path.display().to_string())?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Yaml));
            file_text = Some((path.display().to_string(), text));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("UNDERSTUDY")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("kafka.input_topics")
                .with_list_parse_key("input.propagate_headers")
                .try_parsing(true),
        );
        let layered = builder.build().map_err(|e| ConfigError::Environment(e.to_string()))?;
        let mut settings: Settings = layered.try_deserialize().map_err(|e| ConfigError::Environment(e.to_string()))?;
        if let Some(b) = &overrides.brokers {
            settings.kafka.brokers = Some(b.clone());
        }
        if let Some(u) = &overrides.database_url {
            settings.store.url = Some(u.clone());
        }
        if let Some(s) = &overrides.scenario {
            settings.scenario.path = s.clone();
        }
        if let Some(m) = overrides.metrics_addr {
            settings.telemetry.metrics_addr = Some(m);
        }
        if let Some(g) = &overrides.group_id {
            settings.kafka.group_id = g.clone();
        }
        match settings.validate() {
            Ok(()) => Ok(settings),
            // A value the file set is reported at its line; one from the environment, a flag or a default
            // by field alone.
            Err(ConfigError::Value { field, message }) => match &file_text {
                Some((file, text)) => {
                    let path: Vec<locate::Seg> = field.split('.').map(|k| locate::Seg::Key(k.to_owned())).collect();
                    let last = field.rsplit('.').next().unwrap_or_default();
                    // Only when the file sets the field itself (`locate` falls back to its parent's line).
                    let at = locate::locate(text, &path).filter(|&l| {
                        text.lines()
                            .nth(l - 1)
                            .is_some_and(|t| t.trim_start().trim_start_matches("- ").starts_with(last))
                    });
                    match at {
                        Some(line) => Err(ConfigError::Invalid { file: file.clone(), line, field, message }),
                        None => Err(ConfigError::Value { field, message }),
                    }
                }
                None => Err(ConfigError::Value { field, message }),
            },
            Err(e) => Err(e),
        }
    }

    /// Parse one YAML file strictly, reporting file, line and field.
    pub fn check_file(text: &str, file: &str) -> Result<Settings> {
        let de = serde_yaml::Deserializer::from_str(text);
        match serde_path_to_error::deserialize::<_, Option<Settings>>(de) {
            Ok(s) => Ok(s.unwrap_or_default()),
            Err(e) => {
                let (line, field, message) = locate::yaml_error(text, &e);
                Err(ConfigError::Invalid { file: file.to_owned(), line, field, message })
            }
        }
    }

    /// Checks that need more than types.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, message: String| Err(ConfigError::Value { field: field.into(), message });
        if self.kafka.input_topics.is_empty() {
            return bad("kafka.input_topics", "name at least one topic to consume".into());
        }
        if let Some(i) = self.input.tenants.iter().position(|t| t.trim().is_empty()) {
            return bad(&format!("input.tenants[{i}]"), "must not be empty".into());
        }
        if self.kafka.group_id.trim().is_empty() {
            return bad("kafka.group_id", "must not be empty".into());
        }
        if self.kafka.group_instance_id.as_ref().is_some_and(|i| i.trim().is_empty()) {
            return bad("kafka.group_instance_id", "must not be empty; leave it out for dynamic membership".into());
        }
        if self.kafka.partitions < 1 {
            return bad("kafka.partitions", format!("must be at least 1, not {}", self.kafka.partitions));
        }
        for (name, ptr) in [
            ("input.fields.payload_id", &self.input.fields.payload_id),
            ("input.fields.batch_id", &self.input.fields.batch_id),
            ("input.fields.channel", &self.input.fields.channel),
            ("input.fields.recipient", &self.input.fields.recipient),
            ("input.fields.tenant_id", &self.input.fields.tenant_id),
        ] {
            if !ptr.is_empty() && !ptr.starts_with('/') {
                return bad(name, format!("`{ptr}` is not a JSON pointer; write it like `/meta/id`"));
            }
        }
        if self.input.channel_source == ChannelSource::Topic {
            for t in &self.kafka.input_topics {
                if !self.input.topic_channels.contains_key(t) {
                    // Reported where the user can see it: the map if there is one, else the switch that needs it.
                    let field = if self.input.topic_channels.is_empty() {
                        "input.channel_source"
                    } else {
                        "input.topic_channels"
                    };
                    return bad(
                        field,
                        format!(
                            "topic `{t}` has no channel; add `{t}: email` (or sms, whatsapp) to `input.topic_channels`"
                        ),
                    );
                }
            }
        }
        if self.store.batch_rows == 0 {
            return bad("store.batch_rows", "must be at least 1".into());
        }
        if self.service.hibernate_after_ms != 0 && self.service.hibernate_after_ms < 1000 {
            return bad("service.hibernate_after_ms", "must be 0 (never) or at least 1000".into());
        }
        if self.service.max_batch == 0 {
            return bad("service.max_batch", "must be at least 1".into());
        }
        if let Some(t) = &self.http.control_token
            && t.trim().len() < 16
        {
            return bad(
                "http.control_token",
                "must be at least 16 characters (it guards load runs and the scenario)".into(),
            );
        }
        for (i, a) in self.http.twilio.accounts.iter().enumerate() {
            if !crate::wire::twilio::is_sid(&a.sid, "AC") {
                return bad(
                    &format!("http.twilio.accounts[{i}].sid"),
                    format!("`{}` is not an account SID; it is `AC` and 32 hex digits", a.sid),
                );
            }
            if a.auth_token.is_empty() {
                return bad(&format!("http.twilio.accounts[{i}].auth_token"), "must not be empty".into());
            }
        }
        if let Some(url) = &self.http.whatsapp.webhook_url
            && !url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
        {
            return bad("http.whatsapp.webhook_url", format!("`{url}` is not an http(s) URL"));
        }
        for (vendor, urls) in [
            ("whatsapp", &self.http.whatsapp.tenant_webhook_urls),
            ("sendgrid", &self.http.sendgrid.tenant_webhook_urls),
            ("ses", &self.http.ses.tenant_webhook_urls),
        ] {
            for (tenant, url) in urls {
                if !url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
                    return bad(
                        &format!("http.{vendor}.tenant_webhook_urls.{tenant}"),
                        format!("`{url}` is not an http(s) URL"),
                    );
                }
            }
        }
        if let Some(url) = &self.http.sendgrid.webhook_url
            && !url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
        {
            return bad("http.sendgrid.webhook_url", format!("`{url}` is not an http(s) URL"));
        }
        if let Some(pem) = &self.http.sendgrid.signing_key_pem {
            use p256::pkcs8::DecodePrivateKey as _;
            if let Err(e) = p256::ecdsa::SigningKey::from_pkcs8_pem(pem) {
                return bad("http.sendgrid.signing_key_pem", format!("not a P-256 private key in PKCS#8 PEM ({e})"));
            }
        }
        if let Some(url) = &self.http.ses.webhook_url
            && !url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
        {
            return bad("http.ses.webhook_url", format!("`{url}` is not an http(s) URL"));
        }
        if let Some(url) = &self.http.ses.public_url
            && !url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
        {
            return bad("http.ses.public_url", format!("`{url}` is not an http(s) URL"));
        }
        if !matches!(self.http.ses.signature_version, 1 | 2) {
            return bad("http.ses.signature_version", "is 1 (SHA1withRSA) or 2 (SHA256withRSA)".into());
        }
        if let Some(pem) = &self.http.ses.signing_key_pem
            && let Err(e) = openssl::pkey::PKey::private_key_from_pem(pem.as_bytes()).and_then(|k| k.rsa())
        {
            return bad("http.ses.signing_key_pem", format!("not an RSA private key in PEM ({e})"));
        }
        for (i, c) in self.http.ses.credentials.iter().enumerate() {
            if c.access_key_id.is_empty() || c.secret_access_key.is_empty() {
                return bad(
                    &format!("http.ses.credentials[{i}]"),
                    "needs an access_key_id and a secret_access_key".into(),
                );
            }
        }
        for (field, key, fits) in [
            ("http.twilio.lifecycle_key", &self.http.twilio.lifecycle_key, (|_| false) as fn(&LifecycleKey) -> bool),
            ("http.sendgrid.lifecycle_key", &self.http.sendgrid.lifecycle_key, |k| {
                matches!(k, LifecycleKey::CustomArg(_))
            }),
            ("http.ses.lifecycle_key", &self.http.ses.lifecycle_key, |k| matches!(k, LifecycleKey::Tag(_))),
            ("http.whatsapp.lifecycle_key", &self.http.whatsapp.lifecycle_key, |k| {
                matches!(k, LifecycleKey::OpaqueData)
            }),
        ] {
            if let Some(k) = key
                && !matches!(k, LifecycleKey::Header(_))
                && !fits(k)
            {
                return bad(field, format!("`{}` is not a field of this vendor's requests", String::from(k.clone())));
            }
        }
        for (i, l) in self.http.rate_limits.iter().enumerate() {
            if !(l.per_second.is_finite() && l.per_second > 0.0) {
                return bad(
                    &format!("http.rate_limits[{i}].per_second"),
                    format!("must be above 0, not {}", l.per_second),
                );
            }
            if let Some(b) = l.burst
                && !(b.is_finite() && b >= 1.0)
            {
                return bad(&format!("http.rate_limits[{i}].burst"), format!("must be at least 1, not {b}"));
            }
        }
        if self.http.webhooks_in_flight == 0 {
            return bad("http.webhooks_in_flight", "must be at least 1".into());
        }
        if self.http.workers == 0 {
            return bad("http.workers", "must be at least 1".into());
        }
        if let Some(url) = &self.store.url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://") || url.starts_with("sqlite:")) {
                return bad("store.url", "use a `postgres://…` or `sqlite://…` URL".into());
            }
        }
        Ok(())
    }
}

impl Settings {
    /// The settings as YAML, for `understudy check`: the store URL's password and every `kafka.librdkafka`
    /// value replaced by `***`.
    pub fn effective(&self) -> String {
        let mut shown = self.clone();
        shown.store.url = shown.store.url.as_deref().map(redact);
        for v in shown.kafka.librdkafka.values_mut() {
            *v = "***".into();
        }
        for a in &mut shown.http.twilio.accounts {
            a.auth_token = "***".into();
        }
        for t in shown.http.whatsapp.access_tokens.iter_mut().chain(shown.http.sendgrid.api_keys.iter_mut()) {
            *t = "***".into();
        }
        if shown.http.sendgrid.signing_key_pem.is_some() {
            shown.http.sendgrid.signing_key_pem = Some("***".into());
        }
        if shown.http.ses.signing_key_pem.is_some() {
            shown.http.ses.signing_key_pem = Some("***".into());
        }
        if shown.http.control_token.is_some() {
            shown.http.control_token = Some("***".into());
        }
        for c in &mut shown.http.ses.credentials {
            c.secret_access_key = "***".into();
        }
        for s in [&mut shown.http.whatsapp.app_secret, &mut shown.http.whatsapp.verify_token] {
            if !s.is_empty() {
                *s = "***".into();
            }
        }
        serde_yaml::to_string(&shown).unwrap_or_default()
    }
}

/// Show a URL without its password.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_defaults() {
        let s = Settings::check_file("", "u.yaml").unwrap();
        assert_eq!(s.kafka.ack_topic, "understudy.acks");
    }

    #[test]
    fn unknown_key_names_file_line_and_field() {
        let text = "kafka:\n  group_id: g\n  brokerz: x\n";
        let e = Settings::check_file(text, "u.yaml").unwrap_err().to_string();
        assert!(e.starts_with("u.yaml:3: `kafka.brokerz`: unknown field `brokerz`"), "{e}");
    }

    #[test]
    fn wrong_type_names_field() {
        let text = "store:\n  batch_rows: many\n";
        let e = Settings::check_file(text, "u.yaml").unwrap_err().to_string();
        assert!(e.starts_with("u.yaml:2: `store.batch_rows`"), "{e}");
    }

    #[test]
    fn rate_limits_are_read_and_checked() {
        let text = "http:\n  rate_limits:\n    - { vendor: sendgrid, per_second: 10, burst: 50 }\n    - { vendor: twilio, tenant: AC1, per_second: 1 }\n";
        let s = Settings::check_file(text, "u.yaml").unwrap();
        assert_eq!(s.http.rate_limits.len(), 2);
        assert_eq!(
            (s.http.rate_limits[1].vendor, s.http.rate_limits[1].tenant.as_deref()),
            (crate::wire::Vendor::Twilio, Some("AC1"))
        );
        let mut bad = s.clone();
        bad.http.rate_limits[0].per_second = 0.0;
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("http.rate_limits[0].per_second"), "{e}");
        let e = Settings::check_file("http:\n  rate_limits: [{ vendor: mailgun, per_second: 1 }]\n", "u.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mailgun"), "{e}");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
    }
}
