//! The lifecycle actor: one per outbound message. It walks the message's planned steps and, at each
//! step's due time, hands the ack event to the emitter. It stops after the last step, or as soon as its
//! partition is no longer owned by this instance (the new owner resumes it from the store).
//!
//! A lifecycle keeps only what its events carry (a [`Walk`]): the recipient, the body and the rest of
//! the message are in the store already. Steps that are due are emitted in one go, without a future
//! per step, while the producer has room; when it has none the actor waits in line for it.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use uuid::Uuid;

use super::emitter::Emitter;
use crate::kafka::offsets::Assignments;
use crate::model::{AckEvent, BounceType, Channel, PlannedMessage, Status, event_id, micros_to_time};
use crate::telemetry;

/// What every lifecycle of one pipeline shares.
#[derive(Debug)]
pub struct LifecycleShared {
    pub emitter: Emitter,
    pub assignments: Arc<Assignments>,
    /// Lifecycle actors alive in this pipeline.
    pub in_flight: AtomicI64,
}

/// One step, compactly: failure details only where there are some.
struct Step {
    due_us: i64,
    attempt: u16,
    status: Status,
    bounce_type: Option<BounceType>,
    error: Option<Box<(Option<String>, Option<String>)>>,
}

/// The part of a planned message a lifecycle needs to emit its events.
pub struct Walk {
    payload_id: Box<str>,
    batch_id: Box<str>,
    vendor_message_id: Box<str>,
    tenant_id: Option<Box<str>>,
    topic: Arc<str>,
    partition: i32,
    channel: Channel,
    received_us: i64,
    headers: Box<[(String, Vec<u8>)]>,
    steps: Box<[Step]>,
}

impl Walk {
    /// Keep what the events need; `topic` is the message's source topic, shared among its lifecycles.
    pub fn new(m: PlannedMessage, topic: Arc<str>) -> Self {
        let o = m.outbound;
        let steps = m
            .plan
            .steps
            .into_iter()
            .map(|s| Step {
                due_us: s.due_us,
                attempt: s.attempt,
                status: s.status,
                bounce_type: s.bounce_type,
                error: (s.error_code.is_some() || s.error_reason.is_some()).then(|| Box::new((s.error_code, s.error_reason))),
            })
            .collect();
        Self {
            payload_id: o.payload_id.into_boxed_str(),
            batch_id: o.batch_id.into_boxed_str(),
            vendor_message_id: m.plan.vendor_message_id.into_boxed_str(),
            tenant_id: o.tenant_id.map(String::into_boxed_str),
            topic,
            partition: o.source.partition,
            channel: o.channel,
            received_us: o.received_at.timestamp_micros(),
            headers: o.headers.into_boxed_slice(),
            steps,
        }
    }

    fn event(&self, step: &Step) -> AckEvent {
        let scheduled_at = micros_to_time(self.received_us + step.due_us);
        let (error_code, error_reason) = step.error.as_deref().cloned().unwrap_or_default();
        AckEvent {
            event_id: event_id(&self.payload_id, step.status, step.attempt),
            payload_id: self.payload_id.to_string(),
            batch_id: self.batch_id.to_string(),
            channel: self.channel,
            status: step.status,
            vendor_message_id: self.vendor_message_id.to_string(),
            attempt: step.attempt,
            scheduled_at,
            emitted_at: scheduled_at,
            error_code,
            error_reason,
            bounce_type: step.bounce_type,
            tenant_id: self.tenant_id.as_deref().map(str::to_owned),
        }
    }
}

pub struct Lifecycle {
    walk: Walk,
    next: usize,
    /// Events already stored (a resumed lifecycle): not emitted again.
    skip: Option<Box<HashSet<Uuid>>>,
    generation: u64,
    shared: Arc<LifecycleShared>,
}

impl Lifecycle {
    pub fn new(walk: Walk, skip: Option<HashSet<Uuid>>, generation: u64, shared: Arc<LifecycleShared>) -> Self {
        Self { walk, next: 0, skip: skip.filter(|s| !s.is_empty()).map(Box::new), generation, shared }
    }

    /// Emit every step that is due, then sleep until the next one, or stop after the last.
    fn advance(&mut self, ctx: &mut Context<Self>) {
        loop {
            if let Some(skip) = &self.skip {
                while let Some(s) = self.walk.steps.get(self.next) {
                    if !skip.contains(&event_id(&self.walk.payload_id, s.status, s.attempt)) {
                        break;
                    }
                    self.next += 1;
                }
            }
            let Some(step) = self.walk.steps.get(self.next) else {
                ctx.stop();
                return;
            };
            let wait_us = self.walk.received_us + step.due_us - Utc::now().timestamp_micros();
            if wait_us > 0 {
                ctx.run_later(Duration::from_micros(wait_us as u64), |act, ctx| act.advance(ctx));
                return;
            }
            if !self.shared.assignments.owns(&self.walk.topic, self.walk.partition, self.generation) {
                ctx.stop();
                return;
            }
            let event = self.walk.event(step);
            match self.shared.emitter.try_emit(event, &self.walk.headers) {
                Ok(()) => self.next += 1,
                Err(event) => {
                    // The producer is full: wait in line for room, then go on.
                    let shared = self.shared.clone();
                    let headers = self.walk.headers.clone();
                    ctx.wait(async move { shared.emitter.emit(event, &headers).await }.into_actor(self).map(
                        |_, act, ctx| {
                            act.next += 1;
                            act.advance(ctx);
                        },
                    ));
                    return;
                }
            }
        }
    }
}

impl Actor for Lifecycle {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        telemetry::lifecycles_in_flight(self.walk.channel, 1.0);
        self.advance(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        telemetry::lifecycles_in_flight(self.walk.channel, -1.0);
    }
}
