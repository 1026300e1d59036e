//! Where acks go out. A sink turns an [`crate::model::AckEvent`] into bytes on the wire, in the format
//! its lifecycle's plan names ([`crate::wire`]), and hands each event it delivered on to the persister;
//! it knows nothing of scenarios.
//!
//! - [`kafka`]: the ack topic, through one shared producer.

pub mod kafka;
