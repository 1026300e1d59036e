//! The WhatsApp Cloud API door: `POST /v{NN}.0/{phone-number-id}/messages`, JSON as Meta documents it
//! (`messaging_product`, `to`, `type` and its object, `biz_opaque_callback_data`), Bearer auth. Answers
//! `200` with the message id once the message is durable, or Meta's error. Statuses go to
//! `http.whatsapp.webhook_url`, signed with the app secret, after Meta's verification handshake.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;

use super::{Door, NotTaken, bearer_accepted, header_key, json_answer, plan_or, read_body};
use crate::model::{Channel, Fault};
use crate::plan::{Callback, PlannedStep};
use crate::wire::Vendor;
use crate::wire::whatsapp::{ApiError, write_sent};

/// The message types the door takes, each with the object of its name.
const TYPES: &[&str] = &[
    "text",
    "template",
    "image",
    "video",
    "audio",
    "document",
    "sticker",
    "location",
    "contacts",
    "interactive",
    "reaction",
];

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/{version}/{phone_number_id}/messages", web::post().to(send));
}

fn error(e: &ApiError) -> HttpResponse {
    let mut body = Vec::with_capacity(256);
    e.write(&mut body);
    json_answer(e.http_status, body, Some("OAuth \"Facebook Platform\" \"invalid_token\""))
}

/// A Graph API version in the path: `v` and `NN.0`.
fn is_version(v: &str) -> bool {
    v.strip_prefix('v')
        .and_then(|v| v.split_once('.'))
        .is_some_and(|(major, minor)| !major.is_empty() && major.bytes().all(|b| b.is_ascii_digit()) && minor == "0")
}

/// What the door needs of a send request, or Meta's error for the first thing wrong.
#[derive(Debug, PartialEq)]
struct Send {
    to: String,
    kind: String,
    opaque: Option<String>,
}

fn parse(body: &[u8]) -> Result<Send, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::parameter(format!("(#100) The request body is not valid JSON: {e}")))?;
    let Some(o) = v.as_object() else {
        return Err(ApiError::parameter("(#100) The request body must be a JSON object"));
    };
    match o.get("messaging_product").and_then(Value::as_str) {
        Some("whatsapp") => {}
        Some(other) => {
            return Err(ApiError::parameter(format!(
                "(#100) Param messaging_product must be one of {{WHATSAPP}} - got \"{other}\"."
            )));
        }
        None => return Err(ApiError::parameter("(#100) The parameter messaging_product is required.")),
    }
    let Some(to) = o.get("to").and_then(Value::as_str).filter(|t| !t.trim().is_empty()) else {
        return Err(ApiError::parameter("(#100) The parameter to is required."));
    };
    let digits: String = to.chars().filter(char::is_ascii_digit).collect();
    if !(8..=15).contains(&digits.len()) || to.chars().any(|c| !(c.is_ascii_digit() || "+ -()".contains(c))) {
        return Err(ApiError::new(
            400,
            131009,
            format!("(#131009) Parameter value is not valid: `to` `{to}` is not a phone number"),
        ));
    }
    let kind = o.get("type").and_then(Value::as_str).unwrap_or("text");
    if !TYPES.contains(&kind) {
        return Err(ApiError::parameter(format!(
            "(#100) Param type must be one of {{{}}} - got \"{kind}\".",
            TYPES.join(", ").to_uppercase()
        )));
    }
    let Some(object) = o.get(kind).filter(|x| x.is_object()) else {
        return Err(ApiError::parameter(format!("(#100) The parameter {kind} is required.")));
    };
    if kind == "text" && object.get("body").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(ApiError::parameter("(#100) The parameter text['body'] is required."));
    }
    if kind == "template" && object.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(ApiError::parameter("(#100) The parameter template['name'] is required."));
    }
    let opaque = o.get("biz_opaque_callback_data").and_then(Value::as_str).map(str::to_owned);
    if opaque.as_ref().is_some_and(|d| d.len() > 512) {
        return Err(ApiError::new(
            400,
            131009,
            "(#131009) Parameter value is not valid: biz_opaque_callback_data is over 512 characters",
        ));
    }
    Ok(Send { to: format!("+{digits}"), kind: kind.to_owned(), opaque })
}

/// The send call's error for a scenario's REJECT, as Meta answers it: a throttle is 130429 (429), an
/// outage 131016 (503), any other rejection a 400 with the scenario's code (Meta's, such as 131030).
fn refusal(step: &PlannedStep) -> ApiError {
    let reason = step.error_reason.as_deref().unwrap_or("Message failed to send");
    match step.fault {
        Some(Fault::Throttled) => ApiError::new(429, 130429, "(#130429) Rate limit hit"),
        Some(Fault::Outage) => ApiError::new(503, 131016, format!("(#131016) Service unavailable: {reason}")),
        _ => {
            let code = step.error_code.as_deref().and_then(|c| c.trim().parse().ok()).unwrap_or(131026);
            ApiError::new(400, code, format!("(#{code}) {reason}"))
        }
    }
}

/// `POST /v{NN}.0/{phone-number-id}/messages`.
async fn send(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    door: web::Data<Door>,
) -> HttpResponse {
    let (version, phone_number_id) = path.into_inner();
    if !is_version(&version) {
        return error(&ApiError::new(400, 2500, format!("Unknown path components: /{version}")));
    }
    if !bearer_accepted(&req, &door.settings.whatsapp.access_tokens) {
        return error(&ApiError::bad_token());
    }
    if phone_number_id.is_empty() || !phone_number_id.bytes().all(|b| b.is_ascii_digit()) {
        return error(&ApiError::parameter(format!(
            "(#100) Unsupported post request. Object with ID '{phone_number_id}' does not exist"
        )));
    }
    if door.quota(Vendor::Whatsapp, &phone_number_id, 1).is_some_and(|q| !q.allowed) {
        return error(&ApiError::new(429, 130429, "(#130429) Rate limit hit"));
    }
    let bytes = match read_body(payload, door.settings.max_body_bytes).await {
        Ok(Some(b)) => b,
        Ok(None) => return error(&ApiError::new(413, 100, "(#100) The request body is too large")),
        Err(e) => return error(&ApiError::parameter(format!("(#100) Cannot read the request: {e}"))),
    };
    let send = match parse(&bytes) {
        Ok(s) => s,
        Err(e) => return error(&e),
    };
    // A lifecycle key names the message: a repeated key gets the first call's answer.
    let key = match &door.settings.whatsapp.lifecycle_key {
        Some(crate::config::LifecycleKey::OpaqueData) => send.opaque.as_deref().filter(|o| !o.is_empty()),
        k => header_key(&req, k.as_ref()),
    };
    let payload_id = match key {
        Some(k) => door.keyed_payload_id("whatsapp", &[phone_number_id.as_bytes(), k.as_bytes()]),
        None => door.payload_id("whatsapp", &[phone_number_id.as_bytes(), &bytes]),
    };
    let keyed = if key.is_some() { std::slice::from_ref(&payload_id) } else { &[] };
    let _held = match door.repeated(keyed).await {
        Ok((_, before)) if !before.is_empty() => {
            let first = &before[0];
            let (to, kind) = serde_json::from_slice::<Value>(&first.body)
                .ok()
                .map(|v| (v["to"].as_str().unwrap_or("").to_owned(), v["type"].as_str() == Some("template")))
                .unwrap_or_default();
            let mut body = Vec::with_capacity(256);
            write_sent(&to, &first.plan.vendor_message_id, kind, &mut body);
            return HttpResponse::Ok().content_type("application/json").body(body);
        }
        Ok((held, _)) => held,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look up a lifecycle key");
            return error(&ApiError::new(503, 131016, "(#131016) Service unavailable"));
        }
    };
    let wa = &door.settings.whatsapp;
    let callback =
        crate::config::webhook_for(&wa.webhook_url, &wa.tenant_webhook_urls, &phone_number_id).map(|url| Callback {
            vendor: Vendor::Whatsapp,
            url: url.into(),
            kafka: door.settings.kafka_acks,
            data: send.opaque.as_deref().map(Into::into),
        });
    let taken = door
        .take(Channel::Whatsapp, payload_id, &phone_number_id, &send.to, &phone_number_id, bytes.to_vec(), callback)
        .await;
    let plan = match plan_or(taken, refusal, |not| match not {
        NotTaken::NoBehaviour => {
            ApiError::new(400, 131026, "(#131026) Message undeliverable: the scenario has no whatsapp channel")
        }
        NotTaken::Unavailable => ApiError::new(503, 131016, "(#131016) Service unavailable"),
    }) {
        Ok(plan) => plan,
        Err(e) => return error(&e),
    };
    let mut body = Vec::with_capacity(256);
    let input = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["to"].as_str().map(str::to_owned))
        .unwrap_or_default();
    write_sent(&input, &plan.vendor_message_id, send.kind == "template", &mut body);
    HttpResponse::Ok().content_type("application/json").body(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = r#"{"messaging_product":"whatsapp","to":"15551234567","type":"text","text":{"body":"hi"},"biz_opaque_callback_data":"x"}"#;

    proptest! {
        /// Any body, and any cut or corruption of a good one, gets an answer: never a panic.
        #[test]
        fn any_body_is_answered(bytes in proptest::collection::vec(any::<u8>(), 0..512), cut in 0..GOOD.len(), at in 0..GOOD.len(), byte in any::<u8>()) {
            let _ = parse(&bytes);
            let _ = parse(&GOOD.as_bytes()[..cut]);
            let mut bad = GOOD.as_bytes().to_vec();
            bad[at] = byte;
            let _ = parse(&bad);
        }
    }

    #[test]
    fn requests_get_metas_errors() {
        let code = |s: &str| parse(s.as_bytes()).err().map(|e| e.code);
        assert_eq!(code("{nope"), Some(100));
        assert_eq!(code(r#"{"to":"15551234567","text":{"body":"hi"}}"#), Some(100));
        assert_eq!(code(r#"{"messaging_product":"sms","to":"15551234567","text":{"body":"hi"}}"#), Some(100));
        assert_eq!(code(r#"{"messaging_product":"whatsapp","text":{"body":"hi"}}"#), Some(100));
        assert_eq!(code(r#"{"messaging_product":"whatsapp","to":"12","text":{"body":"hi"}}"#), Some(131009));
        assert_eq!(code(r#"{"messaging_product":"whatsapp","to":"15551234567","type":"text"}"#), Some(100));
        assert_eq!(code(r#"{"messaging_product":"whatsapp","to":"15551234567","type":"fax","fax":{}}"#), Some(100));
        let ok = parse(br#"{"messaging_product":"whatsapp","to":"+1 555 123 4567","type":"template","template":{"name":"hello_world","language":{"code":"en_US"}},"biz_opaque_callback_data":"run-7"}"#).unwrap();
        assert_eq!(ok, Send { to: "+15551234567".into(), kind: "template".into(), opaque: Some("run-7".into()) });
        assert!(is_version("v21.0") && !is_version("v21") && !is_version("2010-04-01"));
    }
}
