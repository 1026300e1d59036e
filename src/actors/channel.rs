//! The channel actor: one per channel (Email, SMS, WhatsApp), each on its own arbiter. It plans each
//! message from the scenario, hands the rows to the persister (waiting on its mailbox: backpressure),
//! then starts one lifecycle per message on its arbiter: an actor, or asleep in its queue while the
//! message's first step is far away (see `lifecycle.rs`).

use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use actix::prelude::*;
use uuid::Uuid;

use super::lifecycle::{LifecycleShared, Sleepers, WAKE_EVERY, Waiting, Walk};
use super::persister::{PersistMessages, Persister};
use super::supervisor::{StageGuard, StopStage};
use crate::kafka::offsets::Claim;
use crate::model::{Channel, Fault, Outbound, Status};
use crate::plan::{Callback, NotSent, Plan, PlannedMessage, PlannedStep};
use crate::scenario::{MessageView, Scenario};
use crate::store::{MessageRow, PendingLifecycle};
use crate::telemetry;

/// Decoded messages of this channel, in consumption order, each with the claim on its partition it was
/// consumed under.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Dispatch {
    /// The scenario version the consumer checked the messages against; it plans them all.
    pub scenario: Arc<Scenario>,
    pub batch: Vec<(Claim, Outbound)>,
}

/// Messages a front door took, under the door's `claim`: planned, stored, and their lifecycles started
/// once they are durable. Then `reply` gets what each message came to, in the batch's order (`None`: the
/// scenario has no behaviour for it, and nothing was stored); the door answers its request only then.
/// Dropped unanswered if the messages never became durable (the persister stopped).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Accept {
    pub scenario: Arc<Scenario>,
    pub claim: Claim,
    /// Each message with where its acks are called back, if anywhere.
    pub batch: Vec<(Outbound, Option<Callback>)>,
    pub reply: tokio::sync::oneshot::Sender<Vec<Option<Taken>>>,
    /// Which REJECTs are the send call's error rather than an ack.
    pub refuse: Refuse,
}

/// Which of a scenario's REJECTs a front door answers as the send call's error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refuse {
    /// Every one (Twilio, WhatsApp): the vendor refuses the message when it is sent.
    Rejects,
    /// A throttle's or an outage's only (SendGrid, SES), which refuse the call; any other REJECT is an
    /// event (SendGrid's `dropped`, SES's `Reject`). One refused message refuses the whole request: a
    /// vendor refuses a call, not one recipient of it.
    Faults,
}

impl Refuse {
    /// The step a plan is refused by, in this mode.
    fn refusal(self, plan: &Plan) -> Option<PlannedStep> {
        let first = plan.steps.first().filter(|s| s.status == Status::Reject)?;
        match self {
            Refuse::Rejects => Some(first.clone()),
            Refuse::Faults => matches!(first.fault, Some(Fault::Throttled | Fault::Outage)).then(|| first.clone()),
        }
    }
}

/// What a message taken by a front door came to.
#[derive(Clone, Debug)]
pub struct Taken {
    pub plan: Plan,
    /// A REJECT, which on a front door is the send call's own error, not an ack: the door answers with
    /// it, and the message is stored with the step as not sent ([`Fault::Answered`], or the fault that
    /// caused it) and no lifecycle.
    pub refused: Option<PlannedStep>,
    /// When the door took it, as stored: the vendor's creation time.
    pub received_at: chrono::DateTime<chrono::Utc>,
}

impl Taken {
    /// A plan refused by `refused` (its own first step, or another message's of the request) has all
    /// its steps moved out, as not sent.
    fn of(mut plan: Plan, refused: Option<PlannedStep>, received_at: chrono::DateTime<chrono::Utc>) -> Self {
        if let Some(by) = &refused {
            for s in std::mem::take(&mut plan.steps) {
                if !plan.not_sent.iter().any(|n| (n.status, n.attempt) == (s.status, s.attempt)) {
                    let fault = s.fault.or(by.fault).unwrap_or(Fault::Answered);
                    plan.not_sent.push(NotSent { status: s.status, attempt: s.attempt, fault });
                }
            }
        }
        Self { plan, refused, received_at }
    }
}

/// Unfinished lifecycles of one partition, loaded from the store under the partition's assignment `claim`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resume {
    pub claim: Claim,
    pub lifecycles: Vec<PendingLifecycle>,
}

/// Counters tests and reports read.
#[derive(Debug, Default)]
pub struct ChannelStats {
    pub planned: AtomicU64,
    pub resumed: AtomicU64,
}

pub struct ChannelActor {
    channel: Channel,
    persister: Addr<Persister>,
    stats: Arc<ChannelStats>,
    sleepers: Rc<Sleepers>,
    _guard: StageGuard,
}

impl ChannelActor {
    pub fn new(
        channel: Channel,
        persister: Addr<Persister>,
        shared: Arc<LifecycleShared>,
        stats: Arc<ChannelStats>,
        guard: StageGuard,
    ) -> Self {
        let sleepers = Sleepers::new(shared);
        Self { channel, persister, stats, sleepers, _guard: guard }
    }

    fn start_lifecycle(&mut self, message: PlannedMessage, skip: Option<HashSet<Uuid>>, claim: Claim) {
        // A partition revoked (or revoked and assigned again) meanwhile is resumed from the store by
        // whoever owns it now.
        if claim.holds() {
            let walk = Walk::new(message, &self.sleepers.shared.keys, skip.is_some());
            self.sleepers.start(Waiting::new(walk, skip, claim));
        }
    }
}

impl Actor for ChannelActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4);
        ctx.run_interval(WAKE_EVERY, |act, _| act.sleepers.wake_due());
        tracing::debug!(channel = %self.channel, "channel actor started");
    }
}

impl Handler<Dispatch> for ChannelActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: Dispatch, _: &mut Self::Context) -> Self::Result {
        let mut planned = Vec::with_capacity(msg.batch.len());
        let mut rows = Vec::with_capacity(msg.batch.len());
        telemetry::messages_consumed(self.channel, msg.batch.len() as u64);
        // Lifecycles already planned keep their plans, whatever version runs now.
        let scenario = msg.scenario;
        for (claim, outbound) in msg.batch {
            let Some(plan) = scenario.plan_for(&MessageView::of(&outbound)) else {
                continue;
            };
            let mut pm = PlannedMessage { outbound, plan };
            rows.push(MessageRow::new(&mut pm, scenario.name_arc(), scenario.version()));
            planned.push((claim, pm));
        }
        self.stats.planned.fetch_add(planned.len() as u64, Ordering::Relaxed);
        let persister = self.persister.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let t = Instant::now();
                if persister.send(PersistMessages::new(rows)).await.is_err() {
                    tracing::error!("persister stopped; messages stay uncommitted and are consumed again");
                }
                telemetry::backpressure("persister_messages", t.elapsed());
            }
            .into_actor(self)
            .map(move |_, act, _| {
                for (claim, pm) in planned {
                    act.start_lifecycle(pm, None, claim);
                }
            }),
        ))
    }
}

impl Handler<Accept> for ChannelActor {
    type Result = AtomicResponse<Self, ()>;

    /// Atomic until the persister has the rows (its mailbox is the backpressure), not until they are
    /// durable: many requests share one write.
    fn handle(&mut self, msg: Accept, _: &mut Self::Context) -> Self::Result {
        let Accept { scenario, claim, batch, reply, refuse } = msg;
        telemetry::messages_consumed(self.channel, batch.len() as u64);
        let mut taken = Vec::with_capacity(batch.len());
        let mut planned = Vec::with_capacity(batch.len());
        let mut rows = Vec::with_capacity(batch.len());
        let plans: Vec<(Outbound, Option<Plan>)> = batch
            .into_iter()
            .map(|(outbound, callback)| {
                let plan = scenario.plan_for(&MessageView::of(&outbound)).map(|mut p| {
                    p.callback = callback;
                    p
                });
                (outbound, plan)
            })
            .collect();
        let whole_request = match refuse {
            Refuse::Faults => plans.iter().filter_map(|(_, p)| p.as_ref()).find_map(|p| refuse.refusal(p)),
            Refuse::Rejects => None,
        };
        for (outbound, plan) in plans {
            let Some(plan) = plan else {
                taken.push(None);
                continue;
            };
            let refused = match refuse {
                Refuse::Rejects => refuse.refusal(&plan),
                Refuse::Faults => whole_request.clone(),
            };
            let t = Taken::of(plan, refused, outbound.received_at);
            let mut pm = PlannedMessage { outbound, plan: t.plan.clone() };
            taken.push(Some(t));
            rows.push(MessageRow::new(&mut pm, scenario.name_arc(), scenario.version()));
            if !pm.plan.steps.is_empty() {
                planned.push(pm);
            }
        }
        self.stats.planned.fetch_add(planned.len() as u64, Ordering::Relaxed);
        let persister = self.persister.clone();
        let (durable_tx, durable_rx) = tokio::sync::oneshot::channel();
        // Straight into the persister's mailbox when it has room, so that the next request is handled at
        // once (waiting for the persister's thread to take each request held every request of the
        // channel to one thread hand-over at a time); waiting, atomically, only when it is full.
        // A stopped persister fails the `send` below, which says so.
        let pending = match persister.try_send(PersistMessages { rows, durable: Some(durable_tx) }) {
            Ok(()) => None,
            Err(SendError::Full(msg) | SendError::Closed(msg)) => Some(msg),
        };
        AtomicResponse::new(Box::pin(
            async move {
                let Some(msg) = pending else { return true };
                let t = Instant::now();
                let sent = persister.send(msg).await;
                telemetry::backpressure("persister_messages", t.elapsed());
                sent.is_ok()
            }
            .into_actor(self)
            .map(move |sent, act, ctx| {
                if !sent {
                    tracing::error!("persister stopped; the front door answers that it is unavailable");
                    return;
                }
                ctx.spawn(durable_rx.into_actor(act).map(move |durable, act, _| {
                    if durable.is_err() {
                        return;
                    }
                    for pm in planned {
                        act.start_lifecycle(pm, None, claim.clone());
                    }
                    let _ = reply.send(taken);
                }));
            }),
        ))
    }
}

impl Handler<StopStage> for ChannelActor {
    type Result = ();
    fn handle(&mut self, _: StopStage, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<Resume> for ChannelActor {
    type Result = ();

    fn handle(&mut self, msg: Resume, _: &mut Self::Context) {
        let n = msg.lifecycles.len() as u64;
        self.stats.resumed.fetch_add(n, Ordering::Relaxed);
        telemetry::lifecycles_resumed(n);
        for p in msg.lifecycles {
            self.start_lifecycle(p.message, Some(p.stored_events), msg.claim.clone());
        }
    }
}
