//! The lifecycle actor: one per outbound message. It walks the message's planned steps and, at each
//! step's due time, hands the ack event to the emitter. It stops after the last step, or as soon as its
//! partition is no longer owned by this instance (the new owner resumes it from the store).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use actix::prelude::*;
use chrono::Utc;
use uuid::Uuid;

use super::emitter::Emitter;
use crate::kafka::offsets::Assignments;
use crate::model::{AckEvent, PlannedMessage, event_id};
use crate::telemetry;

/// What every lifecycle of one pipeline shares.
#[derive(Debug)]
pub struct LifecycleShared {
    pub emitter: Emitter,
    pub assignments: Arc<Assignments>,
    /// Lifecycle actors alive in this pipeline.
    pub in_flight: AtomicI64,
}

pub struct Lifecycle {
    message: PlannedMessage,
    next: usize,
    /// Events already stored (a resumed lifecycle): not emitted again.
    skip: Option<Box<HashSet<Uuid>>>,
    generation: u64,
    shared: Arc<LifecycleShared>,
}

impl Lifecycle {
    pub fn new(
        message: PlannedMessage,
        skip: Option<HashSet<Uuid>>,
        generation: u64,
        shared: Arc<LifecycleShared>,
    ) -> Self {
        Self { message, next: 0, skip: skip.filter(|s| !s.is_empty()).map(Box::new), generation, shared }
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        let steps = &self.message.plan.steps;
        if let Some(skip) = &self.skip {
            while self.next < steps.len() {
                let s = &steps[self.next];
                if !skip.contains(&event_id(&self.message.outbound.payload_id, s.status, s.attempt)) {
                    break;
                }
                self.next += 1;
            }
        }
        let Some(step) = steps.get(self.next) else {
            ctx.stop();
            return;
        };
        let due = self.message.outbound.received_at + chrono::Duration::microseconds(step.due_us);
        match (due - Utc::now()).to_std() {
            Ok(wait) if !wait.is_zero() => {
                ctx.run_later(wait, |act, ctx| act.fire(ctx));
            }
            _ => self.fire(ctx),
        }
    }

    fn fire(&mut self, ctx: &mut Context<Self>) {
        let o = &self.message.outbound;
        if !self.shared.assignments.owns(&o.source.topic, o.source.partition, self.generation) {
            ctx.stop();
            return;
        }
        let step = &self.message.plan.steps[self.next];
        let scheduled_at = o.received_at + chrono::Duration::microseconds(step.due_us);
        let event = AckEvent {
            event_id: event_id(&o.payload_id, step.status, step.attempt),
            payload_id: o.payload_id.clone(),
            batch_id: o.batch_id.clone(),
            channel: o.channel,
            status: step.status,
            vendor_message_id: self.message.plan.vendor_message_id.clone(),
            attempt: step.attempt,
            scheduled_at,
            emitted_at: scheduled_at,
            error_code: step.error_code.clone(),
            error_reason: step.error_reason.clone(),
            bounce_type: step.bounce_type,
            tenant_id: o.tenant_id.clone(),
        };
        let shared = self.shared.clone();
        let headers = o.headers.clone();
        ctx.wait(
            async move { shared.emitter.emit(event, &headers).await }.into_actor(self).map(|_, act, ctx| {
                act.next += 1;
                act.schedule(ctx);
            }),
        );
    }
}

impl Actor for Lifecycle {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        telemetry::lifecycles_in_flight(self.message.outbound.channel, 1.0);
        self.schedule(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        telemetry::lifecycles_in_flight(self.message.outbound.channel, -1.0);
    }
}
