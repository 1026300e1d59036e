//! What can stop `load`, `report` and `compare`: one error for the commands, carrying what was being done.

use std::path::Path;
use std::time::Duration;

use crate::load::message::MixError;
use crate::load::profile::ProfileError;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Mix(#[from] MixError),
    #[error(
        "the profile `{profile}` calls for {total} messages; one process sends at most {max} in a run (it keeps \
         about 2 bytes per message and 40 per ack in memory): cap it with --messages or split it over processes \
         with --generator"
    )]
    TooManyMessages { profile: String, total: u64, max: u64 },
    #[error(transparent)]
    Kafka(#[from] crate::kafka::KafkaError),
    #[error("kafka: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("the ack topic `{0}` does not exist (or has no partitions)")]
    NoAckTopic(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("opening the store at {url}: {source}")]
    OpenStore { url: String, source: crate::store::StoreError },
    #[error(transparent)]
    Scenario(#[from] crate::scenario::ScenarioError),
    #[error(transparent)]
    Pipeline(#[from] crate::actors::pipeline::PipelineError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("the stored run `{run_id}` cannot be read: {source}")]
    StoredRun { run_id: String, source: serde_json::Error },
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("no run `{0}` in the store (`understudy report` lists the stored runs)")]
    NoRun(String),
    #[error("interrupted twice: the run is not stored")]
    Interrupted,
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
    #[error("storing the run (its summary is above): {0}")]
    Save(#[source] Box<LoadError>),
    #[error(
        "generator(s) {generators} of run {run_id} stored no part within --wait-for-parts {}: the run above lacks \
         them",
        humantime::format_duration(*wait)
    )]
    MissingParts { run_id: String, generators: String, wait: Duration },
}

pub type Result<T, E = LoadError> = std::result::Result<T, E>;

impl LoadError {
    /// An I/O error with what was being done when it happened.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| LoadError::Io { what, source }
    }

    /// An I/O error on a file, with what was being done to it.
    pub fn file(doing: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        Self::io(format!("{doing} {}", path.display()))
    }
}
