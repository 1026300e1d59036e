//! The lifecycle actor: one per outbound message. It walks the message's planned steps and, at each
//! step's due time, hands the ack event to the emitter. It stops after the last step, or as soon as its
//! partition is no longer owned by this instance (the new owner resumes it from the store).
//!
//! A lifecycle keeps only what its events carry (a [`Walk`]): the recipient, the body and the rest of
//! the message are in the store already. Steps that are due are emitted in one go, without a future
//! per step, while the producer has room; when it has none the actor waits in line for it.
//!
//! A lifecycle whose next step is further away than `service.hibernate_after_ms` hibernates: the actor
//! stops and its state waits in its channel actor's [`Sleepers`] queue, a few hundred bytes instead of
//! an actor with its mailbox, context and timer. The channel actor starts it again as an actor shortly
//! before the step is due, and that actor emits at the exact due time. Vendors keep hours between SEND
//! and OPEN, so most lifecycles of a long scenario are asleep most of the time.

use std::cell::RefCell;
use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::kafka::offsets::{Assignments, Claim};
use crate::model::{AckEvent, BounceType, Channel, Fault, Status, event_id, micros_to_time};
use crate::plan::PlannedMessage;
use crate::sink::kafka::Emitter;
use crate::sink::webhook::{Keys, WebhookSender};
use crate::sink::{self, Envelope};
use crate::telemetry;

/// What every lifecycle of one pipeline shares.
#[derive(Debug)]
pub struct LifecycleShared {
    pub emitter: Emitter,
    /// The webhook sender, when the front doors are open.
    pub webhooks: Option<WebhookSender>,
    pub keys: Keys,
    pub assignments: Arc<Assignments>,
    /// Lifecycles not finished in this pipeline, running or asleep.
    pub in_flight: AtomicI64,
    /// Of those, the ones asleep.
    pub asleep: AtomicI64,
    /// Waits longer than this (µs) are slept in the channel actor's queue; 0: never.
    pub hibernate_after_us: i64,
}

impl LifecycleShared {
    /// Whether a wait of `wait_us` is spent asleep in the channel actor's queue rather than as an actor.
    fn sleeps(&self, wait_us: i64) -> bool {
        self.hibernate_after_us > 0 && wait_us > self.hibernate_after_us
    }

    /// Count a lifecycle in (`delta` 1) or out (-1), as an actor or asleep.
    fn count(&self, channel: Channel, delta: i64, asleep: bool) {
        self.in_flight.fetch_add(delta, Ordering::Relaxed);
        telemetry::lifecycles_in_flight(channel, delta as f64);
        if asleep {
            self.asleep.fetch_add(delta, Ordering::Relaxed);
            telemetry::lifecycles_asleep(channel, delta as f64);
        }
    }
}

/// How long before its due time a sleeping lifecycle is started again as an actor.
pub const WAKE_AHEAD: Duration = Duration::from_millis(500);
/// How often each channel actor looks for lifecycles to wake.
pub const WAKE_EVERY: Duration = Duration::from_millis(100);

/// One step, compactly: failure details only where there are some.
struct Step {
    due_us: i64,
    attempt: u16,
    status: Status,
    bounce_type: Option<BounceType>,
    fault: Option<Fault>,
    error: Option<Box<(Option<String>, Option<String>)>>,
}

/// The part of a planned message a lifecycle needs to emit its events. The ids are shared with the
/// stored row and with every event.
pub struct Walk {
    payload_id: Arc<str>,
    batch_id: Arc<str>,
    vendor_message_id: Arc<str>,
    tenant_id: Option<Arc<str>>,
    channel: Channel,
    received_us: i64,
    envelope: Arc<Envelope>,
    steps: Box<[Step]>,
}

impl Walk {
    /// Keep what the events need.
    /// Keep what the events need; `resumed` when the lifecycle resumes from the store.
    pub fn new(m: PlannedMessage, keys: &Keys, resumed: bool) -> Self {
        let o = m.outbound;
        let webhook = m.plan.callback.as_ref().map(|c| Arc::new(keys.target(c, o.tenant_id.as_deref(), resumed)));
        let steps = m
            .plan
            .steps
            .into_iter()
            .map(|s| Step {
                due_us: s.due_us,
                attempt: s.attempt,
                status: s.status,
                bounce_type: s.bounce_type,
                fault: s.fault,
                error: (s.error_code.is_some() || s.error_reason.is_some())
                    .then(|| Box::new((s.error_code, s.error_reason))),
            })
            .collect();
        Self {
            payload_id: o.payload_id,
            batch_id: o.batch_id,
            vendor_message_id: m.plan.vendor_message_id,
            tenant_id: o.tenant_id,
            channel: o.channel,
            received_us: o.received_at.timestamp_micros(),
            envelope: Arc::new(Envelope {
                webhook,
                kafka: m.plan.callback.as_ref().is_none_or(|c| c.kafka),
                headers: o.headers.into_boxed_slice(),
                format: m.plan.format,
                recipient: o.recipient,
            }),
            steps,
        }
    }

    fn event(&self, step: &Step, emitted_at: DateTime<Utc>) -> AckEvent {
        let scheduled_at = micros_to_time(self.received_us + step.due_us);
        let (error_code, error_reason) = step.error.as_deref().cloned().unwrap_or_default();
        AckEvent {
            event_id: event_id(&self.payload_id, step.status, step.attempt),
            payload_id: self.payload_id.clone(),
            batch_id: self.batch_id.clone(),
            channel: self.channel,
            status: step.status,
            vendor_message_id: self.vendor_message_id.clone(),
            attempt: step.attempt,
            scheduled_at,
            emitted_at,
            error_code,
            error_reason,
            bounce_type: step.bounce_type,
            tenant_id: self.tenant_id.clone(),
            fault: step.fault,
        }
    }
}

/// Where a lifecycle is in its walk: all of its state.
pub struct Waiting {
    walk: Walk,
    next: usize,
    /// Events already stored (a resumed lifecycle): not emitted again.
    skip: Option<Box<HashSet<Uuid>>>,
    /// The partition, as owned when the lifecycle started.
    claim: Claim,
}

impl Waiting {
    pub fn new(walk: Walk, skip: Option<HashSet<Uuid>>, claim: Claim) -> Self {
        Self { walk, next: 0, skip: skip.filter(|s| !s.is_empty()).map(Box::new), claim }
    }

    /// The next step to emit, past those already stored; `None` when the walk is over.
    fn next_step(&mut self) -> Option<usize> {
        if let Some(skip) = &self.skip {
            while let Some(s) = self.walk.steps.get(self.next) {
                if !skip.contains(&event_id(&self.walk.payload_id, s.status, s.attempt)) {
                    break;
                }
                self.next += 1;
            }
        }
        (self.next < self.walk.steps.len()).then_some(self.next)
    }

    fn due_us(&self, step: usize) -> i64 {
        self.walk.received_us + self.walk.steps[step].due_us
    }
}

/// The sleeping lifecycles of one channel actor, earliest wake-up first. Shared (on the channel
/// actor's thread) by the channel actor, which wakes them, and its lifecycle actors, which fall asleep.
pub struct Sleepers {
    queue: RefCell<BinaryHeap<Sleeper>>,
    pub(super) shared: Arc<LifecycleShared>,
}

struct Sleeper {
    wake_us: i64,
    waiting: Box<Waiting>,
}

impl PartialEq for Sleeper {
    fn eq(&self, other: &Self) -> bool {
        self.wake_us == other.wake_us
    }
}
impl Eq for Sleeper {}
impl PartialOrd for Sleeper {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Sleeper {
    /// Reversed: the max-heap yields the earliest wake-up.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other.wake_us.cmp(&self.wake_us)
    }
}

impl Sleepers {
    pub fn new(shared: Arc<LifecycleShared>) -> Rc<Self> {
        Rc::new(Self { queue: RefCell::new(BinaryHeap::new()), shared })
    }

    /// Start a lifecycle: as an actor when its next step is near, asleep otherwise.
    pub fn start(self: &Rc<Self>, mut w: Waiting) {
        let Some(step) = w.next_step() else { return };
        let due_us = w.due_us(step);
        if self.shared.sleeps(due_us - Utc::now().timestamp_micros()) {
            self.sleep(w, due_us);
        } else {
            Lifecycle::new(w, self).start();
        }
    }

    /// Keep `w` until [`WAKE_AHEAD`] before `due_us`.
    fn sleep(&self, w: Waiting, due_us: i64) {
        self.shared.count(w.walk.channel, 1, true);
        let wake_us = due_us - WAKE_AHEAD.as_micros() as i64;
        self.queue.borrow_mut().push(Sleeper { wake_us, waiting: Box::new(w) });
    }

    /// Start, as actors, the lifecycles due within [`WAKE_AHEAD`]; drop those whose partition is gone
    /// (its new owner resumes them from the store).
    pub fn wake_due(self: &Rc<Self>) {
        let now = Utc::now().timestamp_micros();
        loop {
            let sleeper = {
                let mut q = self.queue.borrow_mut();
                match q.peek() {
                    Some(s) if s.wake_us <= now => q.pop().expect("peeked"),
                    _ => return,
                }
            };
            let w = *sleeper.waiting;
            self.shared.count(w.walk.channel, -1, true);
            if w.claim.holds() {
                Lifecycle::new(w, self).start();
            }
        }
    }
}

/// The actor of a lifecycle that has a step due soon.
pub struct Lifecycle {
    /// `None` once it fell asleep (its state moved to the sleepers queue).
    w: Option<Waiting>,
    channel: Channel,
    shared: Arc<LifecycleShared>,
    sleepers: Rc<Sleepers>,
}

impl Lifecycle {
    fn new(w: Waiting, sleepers: &Rc<Sleepers>) -> Self {
        Self { channel: w.walk.channel, w: Some(w), shared: sleepers.shared.clone(), sleepers: sleepers.clone() }
    }

    /// Emit every step that is due, then wait for the next one (or sleep), or stop after the last.
    fn advance(&mut self, ctx: &mut Context<Self>) {
        // One reading of the clock for the steps due now: they are emitted microseconds apart.
        let now = Utc::now();
        let now_us = now.timestamp_micros();
        loop {
            let Some(w) = self.w.as_mut() else { return };
            let Some(step) = w.next_step() else {
                ctx.stop();
                return;
            };
            let due_us = w.due_us(step);
            let wait_us = due_us - now_us;
            if wait_us > 0 {
                if self.shared.sleeps(wait_us) {
                    let w = self.w.take().expect("checked");
                    self.sleepers.sleep(w, due_us);
                    ctx.stop();
                } else {
                    ctx.run_later(Duration::from_micros(wait_us as u64), |act, ctx| act.advance(ctx));
                }
                return;
            }
            if !w.claim.holds() {
                ctx.stop();
                return;
            }
            let event = w.walk.event(&w.walk.steps[step], now);
            match sink::try_emit(&self.shared.emitter, event, &w.walk.envelope) {
                Ok(()) => w.next += 1,
                Err(event) => {
                    // The producer is full: wait in line for room, then go on.
                    let shared = self.shared.clone();
                    let envelope = w.walk.envelope.clone();
                    let emit =
                        async move { sink::emit(&shared.emitter, shared.webhooks.as_ref(), event, &envelope).await };
                    ctx.wait(emit.into_actor(self).map(|_, act, ctx| {
                        if let Some(w) = act.w.as_mut() {
                            w.next += 1;
                        }
                        act.advance(ctx);
                    }));
                    return;
                }
            }
        }
    }
}

impl Actor for Lifecycle {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.shared.count(self.channel, 1, false);
        self.advance(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // A lifecycle that fell asleep is counted again by the queue.
        self.shared.count(self.channel, -1, false);
    }
}
