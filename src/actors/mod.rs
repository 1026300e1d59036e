//! The actor system. Data flows `consumer → channel → lifecycle → emitter → persister`; `pipeline` wires
//! the stages together, sink end first.

pub mod channel;
pub mod consumer;
pub mod emitter;
pub mod lifecycle;
pub mod persister;
pub mod pipeline;
pub mod supervisor;
