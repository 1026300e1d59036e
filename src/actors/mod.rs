//! The core between the doors: channel and lifecycle actors, and the persister. Data flows
//! `source → channel → lifecycle → sink → persister`; `pipeline` wires the stages together, sink end
//! first. The sources are in [`crate::source`], the sinks in [`crate::sink`].

pub mod channel;
pub mod lifecycle;
pub mod persister;
pub mod pipeline;
pub mod supervisor;
