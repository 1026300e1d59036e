//! Where outbound messages come in. A source turns its input into [`crate::model::Outbound`] messages
//! and hands them, in batches, to the channel actors ([`crate::actors::channel::Dispatch`]); it knows
//! nothing of scenarios. It tells its input a message is taken only once the message is durable.
//!
//! - [`kafka`]: the platform's outbound topic, through a consumer group; offsets stored only after what
//!   a message caused is durable (see `docs/offsets.md`).
//! - [`http`]: the vendors' own REST APIs (Twilio), each answered once its message is durable.

pub mod http;
pub mod kafka;
