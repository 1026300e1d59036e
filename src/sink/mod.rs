//! Where acks go out. A sink turns an [`AckEvent`] into bytes on the wire, in the format its
//! lifecycle's plan names ([`crate::wire`]), and hands each event it is done with on to the persister;
//! it knows nothing of scenarios.
//!
//! - [`kafka`]: the ack topic, through one shared producer.
//! - [`webhook`]: the vendor's own webhooks, to the message's callback URL, signed.
//! - [`http`]: the webhooks' HTTP client (hyper's, pooled), and receivers' URLs parsed once.
//! - [`sns`]: SNS's signing key, certificate and subscriptions, for SES events.
//!
//! An event that goes to both is stored once both are done ([`webhook::Joint`]).

pub mod attempts;
pub mod http;
pub mod kafka;
pub mod sns;
pub mod webhook;

use std::sync::Arc;

use chrono::Utc;

use crate::model::AckEvent;
use crate::wire::AckFormat;
use kafka::Emitter;
use webhook::{Joint, Target, WebhookSender};

/// How a lifecycle's events go out: the record headers copied from its message, the ack format, and the
/// recipient (which vendor formats carry); the webhook it calls back, and whether the ack topic gets
/// them too. One per lifecycle, shared by its events.
#[derive(Debug)]
pub struct Envelope {
    pub headers: Box<[(String, Vec<u8>)]>,
    pub format: AckFormat,
    pub recipient: Arc<str>,
    pub webhook: Option<Arc<Target>>,
    pub kafka: bool,
}

impl Envelope {
    /// Acks to the ack topic only, as the Kafka door's are.
    pub fn kafka(headers: Box<[(String, Vec<u8>)]>, format: AckFormat, recipient: Arc<str>) -> Self {
        Self { headers, format, recipient, webhook: None, kafka: true }
    }
}

/// Emit one event now if it goes to the ack topic alone and the producer has room; otherwise hand it
/// back, for [`emit`].
pub fn try_emit(kafka: &Emitter, event: AckEvent, envelope: &Envelope) -> Result<(), AckEvent> {
    if envelope.webhook.is_some() || !envelope.kafka {
        return Err(event);
    }
    kafka.try_emit(event, envelope)
}

/// Emit one event to where its envelope says, waiting for room. The event's `emitted_at` is when it
/// goes out.
pub async fn emit(kafka: &Emitter, webhooks: Option<&WebhookSender>, mut event: AckEvent, envelope: &Envelope) {
    let (Some(target), Some(sender)) = (&envelope.webhook, webhooks) else {
        return kafka.emit(event, envelope).await;
    };
    let permit = sender.room().await;
    event.emitted_at = Utc::now();
    let calls_back = target.calls_back(event.status);
    match (envelope.kafka, calls_back) {
        (true, true) => {
            let joint = Joint::new();
            kafka.emit_with(event.clone(), envelope, Some(joint.clone())).await;
            sender.deliver(permit, event, envelope.recipient.clone(), target.clone(), Some(joint));
        }
        (true, false) => {
            drop(permit);
            kafka.emit_with(event, envelope, None).await;
        }
        (false, true) => sender.deliver(permit, event, envelope.recipient.clone(), target.clone(), None),
        // Nowhere to go (a status the vendor does not call back for): stored, so it is not sent again.
        (false, false) => sender.record(permit, event, target.clone()),
    }
}
