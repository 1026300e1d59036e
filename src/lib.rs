//! Understudy: a stand-in for Email, SMS and WhatsApp vendors on Kafka.
//!
//! It consumes a notification platform's outbound topic, walks each message through a vendor lifecycle
//! drawn deterministically from a scenario, produces the vendor's acks back to Kafka on schedule, and
//! keeps a full audit trail in Postgres or SQLite. See `README.md` and `docs/`.

pub mod actors;
pub mod config;
pub mod control;
pub mod demo;
pub mod error;
pub mod json;
pub mod kafka;
pub mod load;
pub mod model;
pub mod plan;
pub mod scenario;
pub mod sink;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod wire;
