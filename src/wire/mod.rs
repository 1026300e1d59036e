//! The vendors' wire vocabulary, in one place: the ack formats (Understudy's own event, each vendor's
//! webhook body, a platform's template), the vendors' own names for statuses, and the record headers
//! Understudy reads and writes. Sources, sinks and scenarios import it; it imports none of them, only the
//! domain types of [`crate::model`].

pub mod format;
pub mod headers;
pub mod sendgrid;
pub mod ses;
mod template;
pub mod twilio;
pub mod whatsapp;

use chrono::{DateTime, SecondsFormat, Utc};

pub use format::{AckFormat, Batching, FIELDS};

/// A vendor whose webhooks Understudy sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Vendor {
    Twilio,
    Whatsapp,
    Sendgrid,
    Ses,
}

impl Vendor {
    pub const ALL: [Vendor; 4] = [Vendor::Twilio, Vendor::Whatsapp, Vendor::Sendgrid, Vendor::Ses];

    /// Whether the vendor calls back for this status at all: Twilio not for a deferral (it never reports
    /// `queued` after `sent`), WhatsApp neither (it has no status for one); SendGrid and SES for every
    /// one (SES: `DeliveryDelay`).
    pub fn calls_back(self, status: crate::model::Status) -> bool {
        match self {
            Vendor::Twilio | Vendor::Whatsapp => status != crate::model::Status::Deferred,
            Vendor::Sendgrid | Vendor::Ses => true,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Vendor::Twilio => "twilio",
            Vendor::Whatsapp => "whatsapp",
            Vendor::Sendgrid => "sendgrid",
            Vendor::Ses => "ses",
        }
    }
}

use crate::model::AckEvent;

/// Write `event` (to `recipient`) in `format` into `out`.
pub fn write(format: &AckFormat, event: &AckEvent, recipient: &str, out: &mut Vec<u8>) {
    match format {
        AckFormat::Understudy => event.write_json(out),
        AckFormat::Twilio => twilio::status_callback(event, recipient, out),
        AckFormat::Ses => ses::event(event, recipient, out),
        AckFormat::WhatsappCloud => whatsapp::webhook(event, recipient, out),
        AckFormat::Sendgrid(_) => {
            out.push(b'[');
            sendgrid::event(event, recipient, out);
            out.push(b']');
        }
        AckFormat::Template(t) => template::write(t, event, recipient, out),
    }
}

/// The hex of a vendor message id (`SM…`, `wamid.…`, `<…@understudy.email>`).
pub(crate) fn hex_id(vendor_message_id: &str) -> &str {
    let s = vendor_message_id.trim_start_matches('<').trim_start_matches("wamid.").trim_start_matches("SM");
    s.split('@').next().unwrap_or(s)
}

/// Whether two signatures are equal, in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `("5.1.1", "smtp; 550 5.1.1 user unknown")` from a code like `550 5.1.1` and its reason.
pub(crate) fn smtp_status(code: Option<&str>, reason: Option<&str>) -> (String, String) {
    let code = code.unwrap_or("");
    let enhanced = code.split_whitespace().find(|p| p.split('.').count() == 3).unwrap_or("5.0.0").to_owned();
    (enhanced, format!("smtp; {} {}", code, reason.unwrap_or("")).trim_end().to_owned())
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::Value;

    use super::{AckFormat, write};
    use crate::model::{AckEvent, BounceType, Channel, Status, event_id, micros_to_time, vendor_message_id};

    pub(crate) fn event(channel: Channel, status: Status, code: Option<(&str, &str)>) -> AckEvent {
        AckEvent {
            event_id: event_id("p-1", status, 1),
            payload_id: "p-1".into(),
            batch_id: "b".into(),
            channel,
            status,
            vendor_message_id: vendor_message_id(channel, "p-1"),
            attempt: 1,
            scheduled_at: micros_to_time(1_764_064_800_000_000),
            emitted_at: micros_to_time(1_764_064_800_100_000),
            error_code: code.map(|c| c.0.into()),
            error_reason: code.map(|c| c.1.into()),
            bounce_type: (status == Status::Bounce).then_some(BounceType::Hard),
            tenant_id: Some("acme".into()),
            fault: None,
        }
    }

    pub(crate) fn json(format: &AckFormat, e: &AckEvent, to: &str) -> Value {
        let mut out = Vec::new();
        write(format, e, to, &mut out);
        serde_json::from_slice(&out).unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&out)))
    }
}
