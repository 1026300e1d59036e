//! Twilio Programmable Messaging: its `MessageStatus` names, a status callback's fields (SMS and
//! WhatsApp through Twilio), the Message resource its REST API answers with, and its errors.

use chrono::{DateTime, Utc};

use super::hex_id;
use crate::json::ObjectWriter;
use crate::model::{AckEvent, Channel, Status, vendor_message_id};

/// The API version in every path and resource.
pub const API_VERSION: &str = "2010-04-01";

/// Whether `s` is a Twilio SID of the kind `prefix` (`AC` account, `SM` message, `MG` messaging service):
/// the prefix and 32 hex digits.
pub fn is_sid(s: &str, prefix: &str) -> bool {
    s.len() == 34 && s.starts_with(prefix) && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The message SID for a lifecycle's vendor message id: `SM` and its 32 hex digits.
pub fn message_sid(vendor_message_id: &str) -> String {
    format!("SM{}", hex_id(vendor_message_id))
}

/// The account SID status callbacks carry: the tenant when it is an account SID (a message taken by the
/// Twilio front door), otherwise one derived from the tenant.
fn account_sid(tenant: Option<&str>) -> String {
    match tenant {
        Some(t) if is_sid(t, "AC") => t.to_owned(),
        t => format!("AC{}", &hex_id(&vendor_message_id(Channel::Sms, t.unwrap_or("")))[..32]),
    }
}

/// An error as Twilio's REST API answers it: `{code, message, more_info, status}` with its HTTP status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub http_status: u16,
    pub code: u32,
    pub message: String,
}

impl ApiError {
    pub fn new(http_status: u16, code: u32, message: impl Into<String>) -> Self {
        Self { http_status, code, message: message.into() }
    }

    /// 20003: the credentials are missing or wrong.
    pub fn authenticate() -> Self {
        Self::new(401, 20003, "Authenticate")
    }

    /// 20404: no such resource.
    pub fn not_found(path: &str) -> Self {
        Self::new(404, 20404, format!("The requested resource {path} was not found"))
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        ObjectWriter::new(out)
            .int("code", i64::from(self.code))
            .str("message", &self.message)
            .str("more_info", &format!("https://www.twilio.com/docs/errors/{}", self.code))
            .int("status", i64::from(self.http_status))
            .end();
    }
}

/// A Message resource, as the REST API answers a create (`201`) or a fetch.
pub struct MessageResource<'a> {
    pub account_sid: &'a str,
    pub sid: &'a str,
    pub to: &'a str,
    pub from: Option<&'a str>,
    pub messaging_service_sid: Option<&'a str>,
    pub body: &'a str,
    pub status: &'a str,
    pub num_media: usize,
    pub date_created: DateTime<Utc>,
    pub date_updated: DateTime<Utc>,
    pub date_sent: Option<DateTime<Utc>>,
    pub error_code: Option<i64>,
    pub error_message: Option<&'a str>,
}

/// Twilio's dates: RFC 2822, in GMT.
pub fn rfc2822(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S +0000").to_string()
}

/// How many SMS segments `body` takes: 160 GSM-7 characters alone or 153 each when concatenated; 70 or
/// 67 when a character needs UCS-2.
pub fn segments(body: &str) -> usize {
    let gsm = body.chars().all(|c| c.is_ascii() && (c >= ' ' || c == '\n' || c == '\r'));
    let (alone, each) = if gsm { (160, 153) } else { (70, 67) };
    let n = if gsm { body.len() } else { body.encode_utf16().count() };
    if n <= alone { 1 } else { n.div_ceil(each) }
}

impl MessageResource<'_> {
    pub fn write(&self, out: &mut Vec<u8>) {
        let uri = format!("/{API_VERSION}/Accounts/{}/Messages/{}", self.account_sid, self.sid);
        let mut w = ObjectWriter::new(out);
        w.str("account_sid", self.account_sid)
            .str("api_version", API_VERSION)
            .str("body", self.body)
            .str("date_created", &rfc2822(self.date_created))
            .opt_str("date_sent", self.date_sent.map(rfc2822).as_deref())
            .str("date_updated", &rfc2822(self.date_updated))
            .str("direction", "outbound-api");
        match self.error_code {
            Some(c) => w.int("error_code", c),
            None => w.null("error_code"),
        };
        w.opt_str("error_message", self.error_message)
            .opt_str("from", self.from)
            .opt_str("messaging_service_sid", self.messaging_service_sid)
            .str("num_media", &self.num_media.to_string())
            .str("num_segments", &segments(self.body).to_string())
            .null("price")
            .str("price_unit", "USD")
            .str("sid", self.sid)
            .str("status", self.status)
            .raw("subresource_uris", |out| {
                let mut s = ObjectWriter::new(out);
                s.str("media", &format!("{uri}/Media.json")).str("feedback", &format!("{uri}/Feedback.json"));
                s.end();
            })
            .str("to", self.to)
            .str("uri", &format!("{uri}.json"));
        w.end();
    }
}

/// Twilio's `MessageStatus` for a status and its error code: `undelivered` is `failed` for the codes
/// Twilio reports as never sent (30001 queue overflow, 30036 validity period expired).
pub fn message_status_with(status: Status, error_code: Option<&str>) -> &'static str {
    match (status, error_code.map(str::trim)) {
        (Status::Undelivered, Some("30001" | "30036")) => "failed",
        _ => message_status(status),
    }
}

/// Twilio's error code for a WhatsApp message's Meta (Cloud API) code: its 63xxx, as Twilio's
/// correspondence of the two lists has them; a code that is Twilio's already stays.
pub fn whatsapp_error_code(code: &str) -> String {
    let code = code.trim();
    let twilio = match code {
        // Outside the 24-hour window (on-premises 470).
        "131047" => "63016",
        // Undeliverable (1026), and a recipient that is no WhatsApp user.
        "131026" | "131030" => "63024",
        // Throughput, pair rate and spam rate limits (429, 471).
        "130429" | "131056" | "131048" => "63018",
        // Meta chose not to deliver a marketing message.
        "131049" => "63049",
        // Template parameters (2000), a template that does not exist (2001).
        "132000" => "63028",
        "132001" => "63027",
        // Content the channel does not take: message type, media.
        "131051" | "131052" | "131053" => "63021",
        // Payment (402).
        "131042" => "63020",
        // Internal errors, the service unavailable (500).
        "131000" | "131016" | "2" => "63012",
        c if c.starts_with("63") => c,
        _ => "63023",
    };
    twilio.to_owned()
}

/// The status a Twilio `MessageStatus` reports (the receiving side of [`message_status`]): `failed`,
/// never sent, is REJECT; `queued`, `accepted` and `sending` report nothing.
pub fn status_of(message_status: &str) -> Option<Status> {
    Some(match message_status {
        "sent" => Status::Send,
        "delivered" => Status::Delivery,
        "read" => Status::Read,
        "undelivered" => Status::Undelivered,
        "failed" => Status::Reject,
        _ => return None,
    })
}

/// Twilio's `MessageStatus` for a status.
pub fn message_status(status: Status) -> &'static str {
    match status {
        Status::Send => "sent",
        Status::Delivery => "delivered",
        Status::Read => "read",
        Status::Undelivered => "undelivered",
        Status::Reject | Status::Bounce | Status::Complaint => "failed",
        Status::Deferred => "queued",
        Status::Open | Status::Click => "read",
    }
}

/// The `status` a fetch of a message answers, and the status that set it, from its statuses so far
/// (oldest first): `queued` before the first (`accepted` when sent through a Messaging Service), then
/// the latest. A deferral never shows: Twilio has no `queued` after `sent`, and before it the message is
/// queued anyway.
pub fn fetched_status<'a>(
    statuses: impl IntoIterator<Item = (Status, Option<&'a str>)>,
    via_service: bool,
) -> (&'static str, Option<Status>) {
    match statuses.into_iter().filter(|(s, _)| *s != Status::Deferred).last() {
        Some((s, code)) => (message_status_with(s, code), Some(s)),
        None if via_service => ("accepted", None),
        None => ("queued", None),
    }
}

/// A status callback's parameters, in Twilio's order: what its webhook posts form-encoded, and what the
/// `twilio` ack format writes as a JSON object.
pub fn callback_fields(e: &AckEvent, recipient: &str) -> Vec<(&'static str, String)> {
    let sid = message_sid(&e.vendor_message_id);
    let status = message_status_with(e.status, e.error_code.as_deref());
    let whatsapp = e.channel == Channel::Whatsapp;
    let number = recipient.trim_start_matches("whatsapp:");
    let to = if whatsapp { format!("whatsapp:{number}") } else { recipient.to_owned() };
    let from = if whatsapp { "whatsapp:+15005550006" } else { "+15005550006" };
    let mut f = vec![
        ("AccountSid", account_sid(e.tenant_id.as_deref())),
        ("ApiVersion", API_VERSION.to_owned()),
        ("MessageSid", sid.clone()),
        ("SmsSid", sid),
        ("MessageStatus", status.to_owned()),
        ("SmsStatus", status.to_owned()),
        ("To", to),
        ("From", from.to_owned()),
    ];
    if whatsapp {
        f.push(("ChannelPrefix", "whatsapp".to_owned()));
        f.push(("ChannelToAddress", number.to_owned()));
    }
    if let Some(code) = e.error_code.as_deref().filter(|_| e.status.is_failure()) {
        // WhatsApp through Twilio has Twilio's 63xxx codes, not Meta's.
        let code = if whatsapp { whatsapp_error_code(code) } else { code.to_owned() };
        f.push(("ErrorCode", code));
    }
    if !whatsapp && matches!(e.status, Status::Delivery | Status::Undelivered) {
        // The carrier's delivery-receipt time, YYMMDDhhmm.
        f.push(("RawDlrDoneDate", e.scheduled_at.format("%y%m%d%H%M").to_string()));
    }
    f
}

pub(super) fn status_callback(e: &AckEvent, recipient: &str, out: &mut Vec<u8>) {
    let mut w = ObjectWriter::new(out);
    for (k, v) in callback_fields(e, recipient) {
        w.str(k, &v);
    }
    w.end();
}

/// `X-Twilio-Signature`: base64 of HMAC-SHA1, keyed by the account's auth token, over the URL followed
/// by every parameter's name and value, sorted by name.
pub fn signature(auth_token: &str, url: &str, params: &[(&str, String)]) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    let mut sorted: Vec<&(&str, String)> = params.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0).then_with(|| a.1.cmp(&b.1)));
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(auth_token.as_bytes()).expect("any key length");
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::super::AckFormat;
    use super::super::tests::{event, json};
    use crate::model::{Channel, Status};

    #[test]
    fn twilio_status_callbacks() {
        let v = json(
            &AckFormat::Twilio,
            &event(Channel::Sms, Status::Undelivered, Some(("30003", "unreachable"))),
            "+15005550002",
        );
        assert_eq!(v["MessageStatus"], "undelivered");
        assert_eq!(v["ErrorCode"], "30003");
        assert!(v["MessageSid"].as_str().unwrap().starts_with("SM") && v["MessageSid"].as_str().unwrap().len() == 34);
        assert_eq!(v["RawDlrDoneDate"], "2511251000");
        assert_eq!(v["To"], "+15005550002");
        let v = json(&AckFormat::Twilio, &event(Channel::Whatsapp, Status::Read, None), "+15005551000");
        assert_eq!((v["MessageStatus"].as_str(), v["To"].as_str()), (Some("read"), Some("whatsapp:+15005551000")));
        assert!(v.get("ErrorCode").is_none() && v.get("RawDlrDoneDate").is_none());
        // The front door's messages carry their account's SID as the tenant.
        let mut e = event(Channel::Sms, Status::Send, None);
        e.tenant_id = Some("AC0123456789abcdef0123456789abcdef".into());
        assert_eq!(json(&AckFormat::Twilio, &e, "+15005550006")["AccountSid"], "AC0123456789abcdef0123456789abcdef");
    }

    #[test]
    fn a_fetch_shows_the_latest_status_and_never_a_deferral() {
        use super::fetched_status;
        use Status::*;
        let f = |s: &[Status], service| fetched_status(s.iter().map(|s| (*s, None)), service);
        assert_eq!(f(&[], false), ("queued", None));
        assert_eq!(f(&[], true), ("accepted", None));
        assert_eq!(f(&[Deferred], false), ("queued", None));
        assert_eq!(f(&[Send, Deferred], false), ("sent", Some(Send)));
        assert_eq!(f(&[Send, Deferred, Delivery], false), ("delivered", Some(Delivery)));
        assert_eq!(f(&[Send, Delivery, Read], false), ("read", Some(Read)));
        assert_eq!(f(&[Send, Undelivered], false), ("undelivered", Some(Undelivered)));
        assert_eq!(f(&[Send, Deferred, Bounce], false), ("failed", Some(Bounce)));
        // Queue overflow and an expired validity period are final `failed`, never `undelivered`.
        for code in ["30001", "30036"] {
            assert_eq!(fetched_status([(Send, None), (Undelivered, Some(code))], false).0, "failed");
        }
        assert_eq!(fetched_status([(Send, None), (Undelivered, Some("30003"))], false).0, "undelivered");
    }

    #[test]
    fn whatsapp_through_twilio_has_twilios_codes() {
        use super::whatsapp_error_code as code;
        assert_eq!((code("131047"), code("131026"), code("130429")), ("63016".into(), "63024".into(), "63018".into()));
        assert_eq!((code("63032"), code("999999")), ("63032".into(), "63023".into()));
        let mut e = event(Channel::Whatsapp, Status::Undelivered, Some(("131026", "Message undeliverable")));
        e.tenant_id = None;
        let v = json(&AckFormat::Twilio, &e, "+15005551000");
        assert_eq!((v["MessageStatus"].as_str(), v["ErrorCode"].as_str()), (Some("undelivered"), Some("63024")));
        let v = json(
            &AckFormat::Twilio,
            &event(Channel::Sms, Status::Undelivered, Some(("30001", "queue overflow"))),
            "+15005550002",
        );
        assert_eq!((v["MessageStatus"].as_str(), v["ErrorCode"].as_str()), (Some("failed"), Some("30001")));
    }

    #[test]
    fn signatures_are_twilios() {
        // As Twilio's own `RequestValidator.compute_signature` signs it.
        let params: Vec<(&str, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(super::signature("12345", url, &params), "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
    }

    #[test]
    fn message_resources_and_errors_read_as_twilio_writes_them() {
        use super::*;
        let t = crate::model::micros_to_time(1_764_064_800_000_000);
        let r = MessageResource {
            account_sid: "AC0123456789abcdef0123456789abcdef",
            sid: "SM0123456789abcdef0123456789abcdef",
            to: "+15005550006",
            from: None,
            messaging_service_sid: Some("MG0123456789abcdef0123456789abcdef"),
            body: "héllo",
            status: "accepted",
            num_media: 0,
            date_created: t,
            date_updated: t,
            date_sent: None,
            error_code: None,
            error_message: None,
        };
        let mut out = Vec::new();
        r.write(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["date_created"], "Tue, 25 Nov 2025 10:00:00 +0000");
        assert_eq!(
            (v["from"].is_null(), v["error_code"].is_null(), v["num_segments"].as_str()),
            (true, true, Some("1"))
        );
        assert_eq!(
            v["uri"],
            "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages/SM0123456789abcdef0123456789abcdef.json"
        );
        assert_eq!((segments(&"a".repeat(160)), segments(&"a".repeat(161)), segments(&"é".repeat(71))), (1, 2, 2));
        let mut out = Vec::new();
        ApiError::authenticate().write(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401})
        );
        assert!(
            is_sid("AC0123456789abcdef0123456789abcdef", "AC")
                && !is_sid("AC0123", "AC")
                && !is_sid("SM0123456789abcdef0123456789abcdef", "AC")
        );
    }
}
