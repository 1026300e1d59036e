//! The Twilio Programmable Messaging door: `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`,
//! form-encoded (`To`, `From` or `MessagingServiceSid`, `Body`/`MediaUrl`/`ContentSid`,
//! `StatusCallback`), HTTP Basic auth. Answers `201` with the Message resource once the message is
//! durable, or Twilio's error.

use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;

use super::{Door, NotTaken, header_key, json_answer, plan_or, read_body};
use crate::model::{Channel, Fault, Status, micros_to_time};
use crate::plan::{Callback, PlannedStep};
use crate::wire::Vendor;
use crate::wire::twilio::{API_VERSION, ApiError, MessageResource, fetched_status, is_sid, message_sid};

/// The longest body Twilio sends, in characters.
const MAX_BODY_CHARS: usize = 1600;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(&format!("/{API_VERSION}/Accounts/{{account}}/Messages.json"), web::post().to(create))
        .route(&format!("/{API_VERSION}/Accounts/{{account}}/Messages/{{sid}}.json"), web::get().to(fetch));
}

/// Every other path: Twilio's 20404.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    error(&ApiError::not_found(req.path()))
}

fn error(e: &ApiError) -> HttpResponse {
    let mut body = Vec::with_capacity(160);
    e.write(&mut body);
    json_answer(e.http_status, body, Some("Basic realm=\"Twilio API\""))
}

/// The request's Basic credentials, `(user, password)`.
fn basic_auth(req: &HttpRequest) -> Option<(String, String)> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Whether the credentials open `account`: its SID (or an API key, `SK…`) and its auth token when
/// accounts are configured; any credentials for a well-formed account otherwise.
fn authorized(door: &Door, account: &str, credentials: Option<(String, String)>) -> bool {
    let Some((user, password)) = credentials else {
        return false;
    };
    let accounts = &door.settings.twilio.accounts;
    if accounts.is_empty() {
        return true;
    }
    accounts.iter().any(|a| {
        a.sid == account
            && (user == a.sid || is_sid(&user, "SK"))
            && crate::wire::constant_time_eq(password.as_bytes(), a.auth_token.as_bytes())
    })
}

/// An E.164 number: `+` and 8 to 15 digits.
fn is_e164(n: &str) -> bool {
    n.strip_prefix('+').is_some_and(|d| (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

/// The form's fields, the last value of each (`MediaUrl` counted).
#[derive(Default)]
struct Form {
    to: Option<String>,
    from: Option<String>,
    messaging_service_sid: Option<String>,
    body: Option<String>,
    content_sid: Option<String>,
    status_callback: Option<String>,
    media: usize,
}

impl Form {
    fn parse(bytes: &[u8]) -> Self {
        let mut f = Form::default();
        for (k, v) in url::form_urlencoded::parse(bytes) {
            let v = Some(v.into_owned());
            match &*k {
                "To" => f.to = v,
                "From" => f.from = v,
                "MessagingServiceSid" => f.messaging_service_sid = v,
                "Body" => f.body = v,
                "ContentSid" => f.content_sid = v,
                "StatusCallback" => f.status_callback = v,
                "MediaUrl" => f.media += 1,
                _ => {}
            }
        }
        f
    }

    /// The message's channel and recipient, or Twilio's error for the first thing wrong.
    fn check(&self) -> Result<(Channel, &str), ApiError> {
        let to = self.to.as_deref().filter(|t| !t.is_empty());
        let Some(to) = to else {
            return Err(ApiError::new(400, 21604, "A 'To' phone number is required."));
        };
        let from = self.from.as_deref().filter(|f| !f.is_empty());
        let service = self.messaging_service_sid.as_deref().filter(|s| !s.is_empty());
        if from.is_none() && service.is_none() {
            return Err(ApiError::new(400, 21603, "A 'From' phone number is required."));
        }
        if let Some(s) = service
            && !is_sid(s, "MG")
        {
            return Err(ApiError::new(404, 20404, format!("The requested resource /Services/{s} was not found")));
        }
        let body = self.body.as_deref().unwrap_or("");
        if body.is_empty() && self.media == 0 && self.content_sid.as_deref().is_none_or(str::is_empty) {
            return Err(ApiError::new(400, 21602, "Message body is required."));
        }
        if body.chars().count() > MAX_BODY_CHARS {
            return Err(ApiError::new(400, 21617, "The concatenated message body exceeds the 1600 character limit."));
        }
        let (channel, number) = match to.strip_prefix("whatsapp:") {
            Some(n) => (Channel::Whatsapp, n),
            None => (Channel::Sms, to),
        };
        if !is_e164(number) {
            return Err(ApiError::new(400, 21211, format!("Invalid 'To' Phone Number: {to}")));
        }
        if let Some(f) = from
            && !is_e164(f.strip_prefix("whatsapp:").unwrap_or(f))
        {
            return Err(ApiError::new(400, 21212, format!("Invalid From Number: {f}")));
        }
        if let Some(url) = self.callback()
            && !url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
        {
            return Err(ApiError::new(400, 21609, format!("Invalid StatusCallback url: {url}")));
        }
        Ok((channel, number))
    }

    fn callback(&self) -> Option<&str> {
        self.status_callback.as_deref().filter(|u| !u.is_empty())
    }
}

/// The send call's error for a scenario's REJECT: a throttle is Twilio's 429 (20429), an outage its
/// 503, any other rejection a 400 with the scenario's code (Twilio's numeric codes, such as 21610).
fn refusal(step: &PlannedStep, channel: Channel) -> ApiError {
    let reason = step.error_reason.as_deref().unwrap_or("Message rejected");
    match step.fault {
        Some(Fault::Throttled) => ApiError::new(429, 20429, "Too Many Requests"),
        Some(Fault::Outage) => ApiError::new(503, 20503, format!("Service Unavailable: {reason}")),
        _ => {
            let code = step.error_code.as_deref().map(|c| match channel {
                // WhatsApp through Twilio: Twilio's 63xxx, not Meta's code.
                Channel::Whatsapp => crate::wire::twilio::whatsapp_error_code(c),
                _ => c.trim().to_owned(),
            });
            ApiError::new(400, code.and_then(|c| c.parse().ok()).unwrap_or(21610), reason)
        }
    }
}

/// `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`.
async fn create(
    req: HttpRequest,
    account: web::Path<String>,
    payload: web::Payload,
    door: web::Data<Door>,
) -> HttpResponse {
    let account = account.into_inner();
    if !is_sid(&account, "AC") {
        return error(&ApiError::not_found(req.path()));
    }
    if !authorized(&door, &account, basic_auth(&req)) {
        return error(&ApiError::authenticate());
    }
    if door.quota(Vendor::Twilio, &account, 1).is_some_and(|q| !q.allowed) {
        return error(&ApiError::new(429, 20429, "Too Many Requests"));
    }
    let bytes = match read_body(payload, door.settings.max_body_bytes).await {
        Ok(Some(b)) => b,
        Ok(None) => return error(&ApiError::new(413, 20413, "Request entity too large")),
        Err(e) => return error(&ApiError::new(400, 20001, format!("Cannot read the request: {e}"))),
    };
    let form = Form::parse(&bytes);
    let (channel, recipient) = match form.check() {
        Ok(v) => v,
        Err(e) => return error(&e),
    };
    let fields: [&[u8]; 6] = [
        account.as_bytes(),
        form.to.as_deref().unwrap_or("").as_bytes(),
        form.from.as_deref().unwrap_or("").as_bytes(),
        form.messaging_service_sid.as_deref().unwrap_or("").as_bytes(),
        form.body.as_deref().unwrap_or("").as_bytes(),
        form.content_sid.as_deref().unwrap_or("").as_bytes(),
    ];
    // A lifecycle key names the message: a repeated key gets the first call's answer.
    let key = header_key(&req, door.settings.twilio.lifecycle_key.as_ref());
    let payload_id = match key {
        Some(k) => door.keyed_payload_id("twilio", &[account.as_bytes(), k.as_bytes()]),
        None => door.payload_id("twilio", &fields),
    };
    let keyed = if key.is_some() { std::slice::from_ref(&payload_id) } else { &[] };
    let _held = match door.repeated(keyed).await {
        Ok((_, before)) if !before.is_empty() => return resource(&account, &before[0], false),
        Ok((held, _)) => held,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look up a lifecycle key");
            return error(&ApiError::new(503, 20503, "Service Unavailable"));
        }
    };
    // A batch per messaging service, else per account.
    let service = form.messaging_service_sid.as_deref().filter(|s| !s.is_empty());
    let batch_id = service.unwrap_or(&account).to_owned();
    let callback = form.callback().map(|url| Callback {
        vendor: Vendor::Twilio,
        url: url.into(),
        kafka: door.settings.kafka_acks,
        data: None,
    });
    let taken = door.take(channel, payload_id, &batch_id, recipient, &account, bytes.to_vec(), callback).await;
    let to = form.to.as_deref().unwrap_or("");
    let created = taken.as_ref().map_or_else(|_| chrono::Utc::now(), |t| t.received_at);
    let plan = match plan_or(
        taken,
        |s| refusal(s, channel),
        |not| match not {
            NotTaken::NoBehaviour => ApiError::new(
                400,
                21612,
                format!(
                    "The 'To' phone number: {to}, is not currently reachable via {channel}: the scenario has no {channel} channel"
                ),
            ),
            NotTaken::Unavailable => ApiError::new(503, 20503, "Service Unavailable"),
        },
    ) {
        Ok(plan) => plan,
        Err(e) => return error(&e),
    };
    let sid = message_sid(&plan.vendor_message_id);
    let resource = MessageResource {
        account_sid: &account,
        sid: &sid,
        to: form.to.as_deref().unwrap_or(""),
        from: form.from.as_deref().filter(|f| !f.is_empty()),
        messaging_service_sid: service,
        body: form.body.as_deref().unwrap_or(""),
        status: if service.is_some() { "accepted" } else { "queued" },
        num_media: form.media,
        date_created: created,
        date_updated: created,
        date_sent: None,
        error_code: None,
        error_message: None,
    };
    let mut body = Vec::with_capacity(1024);
    resource.write(&mut body);
    HttpResponse::Created().content_type("application/json").body(body)
}

/// `GET /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json`: the Message resource as its lifecycle
/// stands in the store: `queued` (or `accepted`) until its first status, then the latest, with the
/// error code of a failure; `date_sent` once it was sent.
async fn fetch(req: HttpRequest, path: web::Path<(String, String)>, door: web::Data<Door>) -> HttpResponse {
    let (account, sid) = path.into_inner();
    if !is_sid(&account, "AC") {
        return error(&ApiError::not_found(req.path()));
    }
    if !authorized(&door, &account, basic_auth(&req)) {
        return error(&ApiError::authenticate());
    }
    if !is_sid(&sid, "SM") {
        return error(&ApiError::not_found(req.path()));
    }
    let whatsapp = format!("wamid.{}", &sid[2..]);
    let m = match door.store.message_by_vendor_id([&sid, &whatsapp]).await {
        Ok(Some(m)) if m.tenant_id.as_deref() == Some(&account) && !m.plan.refused_at_send() => m,
        Ok(_) => return error(&ApiError::not_found(req.path())),
        Err(e) => {
            tracing::warn!(error = %e, %sid, "cannot look up a message for Twilio's fetch");
            return error(&ApiError::new(503, 20503, "Service Unavailable"));
        }
    };
    resource(&account, &m, true)
}

/// A stored message's Message resource: as its lifecycle stands (`current`, a fetch: `200`), or as the
/// create answered it (a repeated lifecycle key: `201`).
fn resource(account: &str, m: &crate::store::StoredMessage, current: bool) -> HttpResponse {
    let form = Form::parse(&m.body);
    let service = form.messaging_service_sid.as_deref().filter(|s| !s.is_empty());
    let events = if current { &m.events[..] } else { &[] };
    let (status, by) = fetched_status(events.iter().map(|e| (e.status, e.error_code.as_deref())), service.is_some());
    let last = events.iter().rev().find(|e| Some(e.status) == by);
    let failure = last.filter(|e| e.status.is_failure());
    let created = micros_to_time(m.received_at_us);
    let sid = message_sid(&m.plan.vendor_message_id);
    let resource = MessageResource {
        account_sid: account,
        sid: &sid,
        to: form.to.as_deref().unwrap_or(&m.recipient),
        from: form.from.as_deref().filter(|f| !f.is_empty()),
        messaging_service_sid: service,
        body: form.body.as_deref().unwrap_or(""),
        status,
        num_media: form.media,
        date_created: created,
        date_updated: events.last().map_or(created, |e| micros_to_time(e.emitted_at_us)),
        date_sent: events.iter().find(|e| e.status == Status::Send).map(|e| micros_to_time(e.emitted_at_us)),
        error_code: failure.and_then(|e| e.error_code.as_deref()).and_then(|c| match m.channel {
            Channel::Whatsapp => crate::wire::twilio::whatsapp_error_code(c).parse().ok(),
            _ => c.trim().parse().ok(),
        }),
        error_message: failure.and_then(|e| e.error_reason.as_deref()),
    };
    let mut body = Vec::with_capacity(1024);
    resource.write(&mut body);
    let mut answer = if current { HttpResponse::Ok() } else { HttpResponse::Created() };
    answer.content_type("application/json").body(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any body, and any mix of Twilio's own fields with any values, gets an answer: never a panic.
        #[test]
        fn any_form_is_answered(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            fields in proptest::collection::vec(("(To|From|Body|MediaUrl|ContentSid|MessagingServiceSid|StatusCallback|x)", "[ -~]{0,40}"), 0..8),
        ) {
            let _ = Form::parse(&bytes).check();
            let form: String = fields.iter().map(|(k, v)| format!("{k}={}&", url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>())).collect();
            let _ = Form::parse(form.as_bytes()).check();
        }
    }

    fn form(s: &str) -> Form {
        Form::parse(s.as_bytes())
    }

    #[test]
    fn requests_get_twilios_errors_in_twilios_order() {
        let code = |s: &str| form(s).check().err().map(|e| e.code);
        assert_eq!(code("From=%2B15005550006&Body=hi"), Some(21604));
        assert_eq!(code("To=%2B15005550006&Body=hi"), Some(21603));
        assert_eq!(code("To=%2B15005550006&From=%2B15005550001"), Some(21602));
        assert_eq!(code("To=12&From=%2B15005550001&Body=hi"), Some(21211));
        assert_eq!(code("To=%2B15005550006&From=nope&Body=hi"), Some(21212));
        assert_eq!(code(&format!("To=%2B15005550006&From=%2B15005550001&Body={}", "a".repeat(1601))), Some(21617));
        assert_eq!(code("To=%2B15005550006&MessagingServiceSid=MG1&Body=hi"), Some(20404));
        assert_eq!(code("To=%2B15005550006&From=%2B15005550001&Body=hi&StatusCallback=ftp%3A%2F%2Fx"), Some(21609));
        let f = form("To=whatsapp%3A%2B15005550006&From=whatsapp%3A%2B15005550001&MediaUrl=https%3A%2F%2Fx");
        assert_eq!(f.check().unwrap(), (Channel::Whatsapp, "+15005550006"));
        assert_eq!(f.media, 1);
    }
}
