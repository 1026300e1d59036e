//! The channel actor: one per channel (Email, SMS, WhatsApp), each on its own arbiter. It plans each
//! message from the scenario, hands the rows to the persister (waiting on its mailbox: backpressure),
//! then spawns one lifecycle actor per message on its arbiter.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use actix::prelude::*;
use uuid::Uuid;

use super::lifecycle::{Lifecycle, LifecycleShared};
use super::persister::{PersistMessages, Persister};
use crate::model::{Channel, Outbound, PlannedMessage};
use crate::scenario::Scenario;
use crate::store::{MessageRow, PendingLifecycle};
use crate::telemetry;

/// Decoded messages of this channel, in consumption order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Dispatch(pub Vec<Outbound>);

/// Unfinished lifecycles loaded from the store after a (re)assignment.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resume(pub Vec<PendingLifecycle>);

/// Counters tests and reports read.
#[derive(Debug, Default)]
pub struct ChannelStats {
    pub planned: AtomicU64,
    pub resumed: AtomicU64,
}

pub struct ChannelActor {
    channel: Channel,
    scenario: Arc<Scenario>,
    persister: Addr<Persister>,
    shared: Arc<LifecycleShared>,
    stats: Arc<ChannelStats>,
}

impl ChannelActor {
    pub fn new(
        channel: Channel,
        scenario: Arc<Scenario>,
        persister: Addr<Persister>,
        shared: Arc<LifecycleShared>,
        stats: Arc<ChannelStats>,
    ) -> Self {
        Self { channel, scenario, persister, shared, stats }
    }

    fn start_lifecycle(&self, message: PlannedMessage, skip: Option<HashSet<Uuid>>) {
        let src = &message.outbound.source;
        // A partition revoked meanwhile is resumed by its new owner.
        if let Some(generation) = self.shared.assignments.generation(&src.topic, src.partition) {
            Lifecycle::new(message, skip, generation, self.shared.clone()).start();
        }
    }
}

impl Actor for ChannelActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4);
        tracing::debug!(channel = %self.channel, "channel actor started");
    }
}

impl Handler<Dispatch> for ChannelActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: Dispatch, _: &mut Self::Context) -> Self::Result {
        let mut planned = Vec::with_capacity(msg.0.len());
        let mut rows = Vec::with_capacity(msg.0.len());
        for outbound in msg.0 {
            telemetry::message_consumed(self.channel);
            let Some(plan) = self.scenario.plan(self.channel, &outbound.payload_id) else { continue };
            let mut pm = PlannedMessage { outbound, plan };
            rows.push(MessageRow::new(&mut pm, self.scenario.name()));
            planned.push(pm);
        }
        self.stats.planned.fetch_add(planned.len() as u64, Ordering::Relaxed);
        let persister = self.persister.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let t = Instant::now();
                if persister.send(PersistMessages(rows)).await.is_err() {
                    tracing::error!("persister stopped; messages stay uncommitted and are consumed again");
                }
                telemetry::backpressure("persister_messages", t.elapsed());
            }
            .into_actor(self)
            .map(move |_, act, _| {
                for pm in planned {
                    act.start_lifecycle(pm, None);
                }
            }),
        ))
    }
}

impl Handler<Resume> for ChannelActor {
    type Result = ();

    fn handle(&mut self, msg: Resume, _: &mut Self::Context) {
        self.stats.resumed.fetch_add(msg.0.len() as u64, Ordering::Relaxed);
        telemetry::lifecycles_resumed(msg.0.len() as u64);
        for p in msg.0 {
            self.start_lifecycle(p.message, Some(p.stored_events));
        }
    }
}
