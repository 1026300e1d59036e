//! The Amazon SES door: SESv2's `SendEmail`, `POST /v2/email/outbound-emails`, JSON as the AWS SDKs send
//! it (`FromEmailAddress`, `Destination`, `Content` as `Simple`, `Raw` or `Template`, `EmailTags`,
//! `ConfigurationSetName`), signed with SigV4 and checked against `http.ses.credentials` (when there are
//! none, any request with an `Authorization` header is taken; one without gets SES's 403, as unsigned
//! requests do). One lifecycle per recipient (at most 50), `200 {"MessageId"}` once they are all
//! durable, or SES's error: its type in `x-amzn-ErrorType`, `{"message"}` in the body. A scenario's
//! REJECT stays an event (SES's `Reject`, or a suppression's `Bounce`), as SES reports them; a throttle
//! or an outage refuses the call (429 TooManyRequestsException, 503).
//!
//! Events go to `http.ses.webhook_url`, through SNS (signed, after a SubscriptionConfirmation), raw or
//! EventBridge-shaped. The certificate SNS messages are signed with and the SubscribeURL are served here
//! too, under [`crate::sink::sns::PATH`].

use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use chrono::Utc;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Door, Item, NotTaken, read_body};
use crate::model::Channel;
use crate::plan::Callback;
use crate::sink::sns;
use crate::wire::Vendor;
use crate::wire::ses::{Sent, canonical_request, hex, sigv4_signature, write_error};

/// Recipients of one message, at most (SES's limit).
const MAX_RECIPIENTS: usize = 50;

/// How far a request's `X-Amz-Date` may be from now.
const MAX_SKEW: chrono::Duration = chrono::Duration::minutes(5);

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v2/email/outbound-emails", web::post().to(send))
        .route(sns::PATH, web::get().to(subscription))
        .route(&format!("{}/{{name}}", sns::PATH), web::get().to(certificate));
}

/// SES's error: `kind` in `x-amzn-ErrorType`, `message` in the body.
fn error(status: u16, kind: &str, message: &str) -> HttpResponse {
    use actix_web::http::StatusCode;
    let mut body = Vec::with_capacity(128);
    write_error(message, &mut body);
    HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST))
        .insert_header(("x-amzn-ErrorType", format!("{kind}:")))
        .insert_header(("x-amzn-RequestId", uuid::Uuid::new_v4().to_string()))
        .content_type("application/json")
        .body(body)
}

fn bad_request(message: &str) -> HttpResponse {
    error(400, "BadRequestException", message)
}

/// A request's `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
#[derive(Debug, PartialEq)]
struct SigV4 {
    access_key_id: String,
    /// `yyyymmdd/region/service/aws4_request`.
    scope: String,
    signed_headers: String,
    signature: String,
}

fn parse_authorization(v: &str) -> Option<SigV4> {
    let rest = v.strip_prefix("AWS4-HMAC-SHA256")?.trim();
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        match part.trim().split_once('=') {
            Some(("Credential", c)) => credential = Some(c),
            Some(("SignedHeaders", h)) => signed_headers = Some(h),
            Some(("Signature", s)) => signature = Some(s),
            _ => {}
        }
    }
    let (access_key_id, scope) = credential?.split_once('/')?;
    let (signed_headers, signature) = (signed_headers?.to_owned(), signature?.to_owned());
    (scope.split('/').count() == 4 && !access_key_id.is_empty()).then(|| SigV4 {
        access_key_id: access_key_id.to_owned(),
        scope: scope.to_owned(),
        signed_headers,
        signature,
    })
}

/// Check the request's SigV4 signature; the access key id it was signed with, or SES's error.
fn authenticate(req: &HttpRequest, body: &[u8], door: &Door) -> Result<String, Box<HttpResponse>> {
    let error = |status: u16, kind: &str, message: &str| Box::new(error(status, kind, message));
    let forbidden = |kind: &str, message: &str| error(403, kind, message);
    let Some(header) = req.headers().get("authorization").and_then(|v| v.to_str().ok()) else {
        return Err(forbidden("MissingAuthenticationTokenException", "Missing Authentication Token"));
    };
    let credentials = &door.settings.ses.credentials;
    let Some(auth) = parse_authorization(header) else {
        if credentials.is_empty() {
            return Ok(String::new());
        }
        return Err(error(
            400,
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters of AWS4-HMAC-SHA256.",
        ));
    };
    if credentials.is_empty() {
        return Ok(auth.access_key_id);
    }
    let Some(secret) = credentials.iter().find(|c| c.access_key_id == auth.access_key_id) else {
        return Err(forbidden("UnrecognizedClientException", "The security token included in the request is invalid."));
    };
    let header = |name: &str| {
        let values: Vec<&str> = req.headers().get_all(name).filter_map(|v| v.to_str().ok()).collect();
        match values.is_empty() && name == "host" {
            // Over HTTP/2 the host is the `:authority`.
            true => req.uri().authority().map(|a| a.to_string()).unwrap_or_default(),
            false => values.join(","),
        }
    };
    let amz_date = header("x-amz-date");
    let Ok(at) = chrono::NaiveDateTime::parse_from_str(&amz_date, "%Y%m%dT%H%M%SZ") else {
        return Err(error(
            400,
            "IncompleteSignatureException",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        ));
    };
    // The scope names the request's own day and this service.
    let scope_ok = auth.scope.starts_with(amz_date.get(..8).unwrap_or("-"))
        && (auth.scope.ends_with("/ses/aws4_request") || auth.scope.ends_with("/email/aws4_request"));
    if !scope_ok {
        return Err(forbidden(
            "InvalidSignatureException",
            &format!("Credential should be scoped to a valid date and to the service `ses`: {}", auth.scope),
        ));
    }
    let now = Utc::now().naive_utc();
    let fmt = |t: chrono::NaiveDateTime| t.format("%Y%m%dT%H%M%SZ").to_string();
    if at < now - MAX_SKEW {
        return Err(forbidden(
            "InvalidSignatureException",
            &format!(
                "Signature expired: {amz_date} is now earlier than {} ({} - 5 min.)",
                fmt(now - MAX_SKEW),
                fmt(now)
            ),
        ));
    }
    if at > now + MAX_SKEW {
        return Err(forbidden(
            "InvalidSignatureException",
            &format!(
                "Signature not yet current: {amz_date} is still later than {} ({} + 5 min.)",
                fmt(now + MAX_SKEW),
                fmt(now)
            ),
        ));
    }
    let headers: Vec<(String, String)> =
        auth.signed_headers.split(';').map(|name| (name.to_owned(), header(name))).collect();
    // The payload's hash as the client signed it: its `x-amz-content-sha256` (which may be
    // `UNSIGNED-PAYLOAD`), or the body's.
    let body_hash = hex(&Sha256::digest(body));
    let payload = req
        .headers()
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| body_hash.clone(), str::to_owned);
    let canonical = canonical_request(
        req.method().as_str(),
        req.uri().path(),
        req.query_string(),
        &headers,
        &auth.signed_headers,
        &payload,
    );
    let expected = sigv4_signature(&secret.secret_access_key, &amz_date, &auth.scope, &canonical);
    let body_matches = payload == "UNSIGNED-PAYLOAD" || payload == body_hash;
    if !body_matches || !crate::wire::constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
        return Err(forbidden(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        ));
    }
    Ok(auth.access_key_id)
}

/// An address out of `Name <a@b>` or `a@b`.
fn address(s: &str) -> &str {
    let s = s.trim();
    match (s.rfind('<'), s.rfind('>')) {
        (Some(a), Some(b)) if a < b => s[a + 1..b].trim(),
        _ => s,
    }
}

/// SES's complaint about an address, if it has one.
fn address_error(a: &str) -> Option<String> {
    let Some((local, domain)) = a.rsplit_once('@') else {
        return Some(format!("Missing final '@domain' in address <{a}>."));
    };
    let bad = local.is_empty()
        || domain.is_empty()
        || !domain.contains('.')
        || a.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';'));
    bad.then(|| format!("Illegal address <{a}>."))
}

/// The addresses of a header's list: split at the commas outside quotes (`"Doe, John" <j@x.test>`).
fn split_addresses(list: &str) -> Vec<&str> {
    let (mut parts, mut start, mut quoted) = (Vec::new(), 0, false);
    for (i, c) in list.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&list[start..]);
    parts
}

/// What the door needs of a `SendEmail` request, or SES's error.
#[derive(Debug, PartialEq)]
struct Email {
    from: String,
    recipients: Vec<String>,
    subject: Option<String>,
    configuration_set: Option<String>,
    tags: Vec<(String, String)>,
}

/// The `From`, `To`, `Cc` and `Subject` of a raw MIME message's header.
fn raw_headers(mime: &[u8]) -> (Option<String>, Vec<String>, Option<String>) {
    let text = String::from_utf8_lossy(mime);
    let (mut from, mut to, mut subject) = (None, Vec::new(), None);
    let mut lines: Vec<String> = Vec::new();
    for line in text.split("\r\n").flat_map(|l| l.split('\n')) {
        if line.is_empty() {
            break;
        }
        match (line.starts_with([' ', '\t']), lines.last_mut()) {
            (true, Some(last)) => last.push_str(line),
            _ => lines.push(line.to_owned()),
        }
    }
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        match name.trim().to_ascii_lowercase().as_str() {
            "from" => from = Some(address(value).to_owned()),
            "to" | "cc" => {
                to.extend(split_addresses(value).into_iter().map(address).filter(|a| !a.is_empty()).map(str::to_owned))
            }
            "subject" => subject = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    (from, to, subject)
}

fn parse(body: &[u8]) -> Result<Email, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("The request body is not valid JSON: {e}"))?;
    let o = v.as_object().ok_or("The request body must be a JSON object.")?;
    let content = o.get("Content").and_then(Value::as_object).ok_or("Missing required parameter Content.")?;
    let kinds: Vec<&str> =
        ["Simple", "Raw", "Template"].into_iter().filter(|k| content.get(*k).is_some_and(Value::is_object)).collect();
    if kinds.len() != 1 {
        return Err("Content must have exactly one of Simple, Raw or Template.".into());
    }
    let (mut from, mut recipients, mut subject) = (None, Vec::new(), None);
    match kinds[0] {
        "Simple" => {
            let simple = &content["Simple"];
            subject = simple.get("Subject").and_then(|s| s.get("Data")).and_then(Value::as_str).map(str::to_owned);
            if subject.is_none() {
                return Err("Missing required parameter Content.Simple.Subject.Data.".into());
            }
            let body = simple.get("Body");
            let has = |k: &str| body.and_then(|b| b.get(k)).and_then(|t| t.get("Data")).is_some_and(Value::is_string);
            if !has("Text") && !has("Html") {
                return Err("Content.Simple.Body needs Text or Html.".into());
            }
        }
        "Raw" => {
            let data = content["Raw"]
                .get("Data")
                .and_then(Value::as_str)
                .ok_or("Missing required parameter Content.Raw.Data.")?;
            let mime = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|_| "Content.Raw.Data is not valid base64.".to_owned())?;
            let (f, to, s) = raw_headers(&mime);
            (from, recipients, subject) = (f, to, s);
        }
        _ => {
            let t = &content["Template"];
            let named = ["TemplateName", "TemplateArn"]
                .iter()
                .any(|k| t.get(*k).and_then(Value::as_str).is_some_and(|s| !s.is_empty()));
            if !named && !t.get("TemplateContent").is_some_and(Value::is_object) {
                return Err("Content.Template needs TemplateName, TemplateArn or TemplateContent.".into());
            }
        }
    }
    if let Some(f) = o.get("FromEmailAddress").and_then(Value::as_str) {
        from = Some(address(f).to_owned());
    }
    let from = from.filter(|f| !f.is_empty()).ok_or("Missing required parameter FromEmailAddress.")?;
    if let Some(e) = address_error(&from) {
        return Err(e);
    }
    if let Some(d) = o.get("Destination").and_then(Value::as_object) {
        // Given, the Destination says who gets a raw message, as with SES.
        recipients.clear();
        for kind in ["ToAddresses", "CcAddresses", "BccAddresses"] {
            for a in d.get(kind).and_then(Value::as_array).into_iter().flatten() {
                recipients.push(address(a.as_str().ok_or(format!("Destination.{kind} holds strings."))?).to_owned());
            }
        }
    }
    if recipients.is_empty() {
        return Err("Missing required parameter Destination: at least one recipient.".into());
    }
    if recipients.len() > MAX_RECIPIENTS {
        return Err(format!("Recipient count exceeds {MAX_RECIPIENTS}."));
    }
    if let Some(e) = recipients.iter().find_map(|r| address_error(r)) {
        return Err(e);
    }
    let mut tags = Vec::new();
    for t in o.get("EmailTags").and_then(Value::as_array).into_iter().flatten() {
        let (Some(name), Some(value)) = (t.get("Name").and_then(Value::as_str), t.get("Value").and_then(Value::as_str))
        else {
            return Err("Every EmailTag has a Name and a Value.".into());
        };
        let ok = |s: &str| {
            !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        };
        if !ok(name) || name.starts_with("ses:") {
            return Err(format!(
                "Invalid tag name <{name}>: only alphanumeric ASCII characters, '_', and '-' are allowed."
            ));
        }
        if !ok(value) {
            return Err(format!(
                "Invalid tag value <{value}>: only alphanumeric ASCII characters, '_', and '-' are allowed."
            ));
        }
        tags.push((name.to_owned(), value.to_owned()));
    }
    let configuration_set =
        o.get("ConfigurationSetName").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
    Ok(Email { from, recipients, subject, configuration_set, tags })
}

/// An SES message id, the same on every rerun: `0100` and hex, a UUID's shape, `-000000`.
fn message_id(first_payload_id: &str) -> String {
    let h = xxhash_rust::xxh3::xxh3_128(first_payload_id.as_bytes());
    let u = uuid::Uuid::from_u128(h);
    format!("0100{:012x}-{}-000000", (h >> 80) as u64 & 0xffff_ffff_ffff, u.hyphenated())
}

/// `POST /v2/email/outbound-emails`.
async fn send(req: HttpRequest, payload: web::Payload, door: web::Data<Door>) -> HttpResponse {
    let bytes = match read_body(payload, door.settings.max_body_bytes).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            let limit = door.settings.max_body_bytes;
            return error(413, "MessageRejected", &format!("Message length is more than {limit} bytes long."));
        }
        Err(e) => return bad_request(&format!("Cannot read the request: {e}")),
    };
    let caller = match authenticate(&req, &bytes, &door) {
        Ok(c) => c,
        Err(answer) => return *answer,
    };
    let email = match parse(&bytes) {
        Ok(e) => e,
        Err(message) => return bad_request(&message),
    };
    let tenant = email.from.rsplit_once('@').map_or("", |(_, d)| d).to_ascii_lowercase();
    // SES's maximum send rate counts recipients.
    if door.quota(Vendor::Ses, &tenant, email.recipients.len()).is_some_and(|q| !q.allowed) {
        return error(429, "TooManyRequestsException", "Maximum sending rate exceeded.");
    }
    // Each recipient's id is the same on every rerun: its lifecycle key (an EmailTag, or a header, with
    // the address), else the sender, the recipient and the whole request.
    let request_hash = xxhash_rust::xxh3::xxh3_64(&bytes);
    let key = match &door.settings.ses.lifecycle_key {
        Some(crate::config::LifecycleKey::Tag(name)) => {
            email.tags.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
        }
        k => super::header_key(&req, k.as_ref()),
    };
    let ids: Vec<String> = email
        .recipients
        .iter()
        .map(|r| match key {
            Some(k) => door.keyed_payload_id("ses", &[tenant.as_bytes(), k.as_bytes(), r.as_bytes()]),
            None => door.payload_id("ses", &[email.from.as_bytes(), r.as_bytes(), &request_hash.to_le_bytes()]),
        })
        .collect();
    // A repeated key gets the first call's answer: its recipients are not taken again.
    let keyed = if key.is_some() { &ids[..] } else { &[] };
    let (_held, before) = match door.repeated(keyed).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look up lifecycle keys");
            return error(503, "ServiceUnavailableException", "Service Unavailable");
        }
    };
    let repeated: std::collections::HashSet<&str> = before.iter().map(|m| m.payload_id.as_str()).collect();
    let message_id = message_id(&ids[0]);
    let mut sent = Sent {
        message_id: message_id.clone(),
        timestamp: crate::wire::iso(Utc::now()),
        source: email.from.clone(),
        destination: email.recipients.clone(),
        subject: email.subject.clone(),
        configuration_set: email.configuration_set.clone(),
        tags: email.tags.clone(),
        caller,
        index: 0,
    };
    let items: Vec<Item> = ids
        .into_iter()
        .zip(&email.recipients)
        .enumerate()
        .filter(|(_, (payload_id, _))| !repeated.contains(payload_id.as_str()))
        .map(|(index, (payload_id, r))| {
            let ses = &door.settings.ses;
            let callback = crate::config::webhook_for(&ses.webhook_url, &ses.tenant_webhook_urls, &tenant).map(|url| {
                sent.index = index;
                Callback {
                    vendor: Vendor::Ses,
                    url: url.into(),
                    kafka: door.settings.kafka_acks,
                    data: Some(serde_json::to_string(&sent).expect("serializes").into()),
                }
            });
            Item { payload_id, recipient: r.as_str().into(), callback }
        })
        .collect();
    let batch = email.configuration_set.as_deref().unwrap_or("ses");
    let answer = || {
        let mut body = Vec::with_capacity(96);
        crate::json::ObjectWriter::new(&mut body).str("MessageId", &message_id).end();
        HttpResponse::Ok()
            .insert_header(("x-amzn-RequestId", uuid::Uuid::new_v4().to_string()))
            .content_type("application/json")
            .body(body)
    };
    if items.is_empty() {
        return answer();
    }
    match door.take_all(Channel::Email, batch, &tenant, bytes, items, crate::actors::channel::Refuse::Faults).await {
        // A scenario's throttle or outage refuses the call; any other REJECT is a `Reject` event.
        Ok(ref taken) if let Some(step) = taken.iter().flatten().find_map(|t| t.refused.as_ref()) => match step.fault {
            Some(crate::model::Fault::Outage) => error(503, "ServiceUnavailable", "Service Unavailable"),
            _ => error(429, "TooManyRequestsException", "Maximum sending rate exceeded."),
        },
        Ok(taken) if taken.iter().all(Option::is_some) => answer(),
        Ok(_) | Err(NotTaken::NoBehaviour) => error(400, "MessageRejected", "The scenario has no email channel."),
        Err(NotTaken::Unavailable) => error(503, "ServiceUnavailableException", "Service Unavailable"),
    }
}

fn xml(status: actix_web::http::StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status).content_type("text/xml").body(body)
}

/// SNS's `GET /?Action=ConfirmSubscription&TopicArn=…&Token=…` (the SubscribeURL), and
/// `Action=Unsubscribe`.
async fn subscription(req: HttpRequest, door: web::Data<Door>) -> HttpResponse {
    use actix_web::http::StatusCode;
    let query: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(req.query_string().as_bytes()).into_owned().collect();
    let request_id = uuid::Uuid::new_v4();
    let arn = format!("{}:understudy", door.sns.topic_arn);
    let fail = |code: &str, message: &str| {
        xml(
            StatusCode::BAD_REQUEST,
            format!(
                "<ErrorResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"
            ),
        )
    };
    match query.get("Action").map(String::as_str) {
        Some("ConfirmSubscription") => match query.get("Token").and_then(|t| door.sns.confirm(t)) {
            Some(endpoint) => {
                tracing::debug!(%endpoint, "SNS subscription confirmed by its receiver");
                xml(
                    StatusCode::OK,
                    format!(
                        "<ConfirmSubscriptionResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\"><ConfirmSubscriptionResult><SubscriptionArn>{arn}</SubscriptionArn></ConfirmSubscriptionResult><ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></ConfirmSubscriptionResponse>"
                    ),
                )
            }
            None => fail("InvalidParameter", "Invalid token"),
        },
        Some("Unsubscribe") => xml(
            StatusCode::OK,
            format!(
                "<UnsubscribeResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\"><ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></UnsubscribeResponse>"
            ),
        ),
        _ => fail("InvalidAction", "The action is not valid for this endpoint."),
    }
}

/// The certificate SNS messages are signed with, at their `SigningCertURL`.
async fn certificate(name: web::Path<String>, door: web::Data<Door>) -> HttpResponse {
    if *name == door.sns.cert_name {
        HttpResponse::Ok().content_type("application/x-x509-ca-cert").body(door.sns.cert_pem().to_vec())
    } else {
        HttpResponse::NotFound().finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = r#"{"FromEmailAddress":"Shop <news@shop.example>","Destination":{"ToAddresses":["a@x.test"],"CcAddresses":["b@x.test"]},"Content":{"Simple":{"Subject":{"Data":"s"},"Body":{"Text":{"Data":"t"}}}},"EmailTags":[{"Name":"campaign","Value":"winter"}],"ConfigurationSetName":"events"}"#;

    proptest! {
        /// Any body, and any cut or corruption of a good one, gets an answer: never a panic.
        #[test]
        fn any_body_is_answered(bytes in proptest::collection::vec(any::<u8>(), 0..512), cut in 0..GOOD.len(), at in 0..GOOD.len(), byte in any::<u8>(), auth in "[ -~]{0,120}") {
            let _ = parse(&bytes);
            let _ = parse(&GOOD.as_bytes()[..cut]);
            let mut bad = GOOD.as_bytes().to_vec();
            bad[at] = byte;
            let _ = parse(&bad);
            let _ = parse_authorization(&auth);
            let _ = raw_headers(&bytes);
        }
    }

    #[test]
    fn requests_get_ses_errors() {
        let ok = parse(GOOD.as_bytes()).unwrap();
        assert_eq!(ok.from, "news@shop.example");
        assert_eq!(ok.recipients, ["a@x.test", "b@x.test"]);
        assert_eq!(ok.tags, [("campaign".to_owned(), "winter".to_owned())]);
        assert_eq!(ok.configuration_set.as_deref(), Some("events"));
        let err = |s: &str| parse(s.as_bytes()).unwrap_err();
        assert!(err(&GOOD.replace("a@x.test", "nobody")).starts_with("Missing final '@domain'"));
        assert!(err(&GOOD.replace(r#""Name":"campaign""#, r#""Name":"bad tag""#)).starts_with("Invalid tag name"));
        assert!(err(&GOOD.replace(r#""Subject":{"Data":"s"},"#, "")).contains("Subject"));
        let many: Vec<String> = (0..51).map(|i| format!("\"r{i}@x.test\"")).collect();
        let over = GOOD.replace(r#"["a@x.test"]"#, &format!("[{}]", many.join(",")));
        assert_eq!(err(&over), "Recipient count exceeds 50.");
        // A raw message: its header says who it is from and to.
        let mime = base64::engine::general_purpose::STANDARD
            .encode("From: Shop <news@shop.example>\r\nTo: a@x.test,\r\n  \"B, the second\" <b@x.test>\r\nSubject: hi\r\n\r\nbody");
        let raw = parse(format!(r#"{{"Content":{{"Raw":{{"Data":"{mime}"}}}}}}"#).as_bytes()).unwrap();
        assert_eq!(
            (raw.from.as_str(), raw.recipients.len(), raw.subject.as_deref()),
            ("news@shop.example", 2, Some("hi"))
        );
    }

    #[test]
    fn authorization_headers_parse() {
        let a = parse_authorization("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/ses/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa0").unwrap();
        assert_eq!(a.access_key_id, "AKIDEXAMPLE");
        assert_eq!(a.scope, "20150830/us-east-1/ses/aws4_request");
        assert_eq!(a.signed_headers, "host;x-amz-date");
        assert!(parse_authorization("Bearer x").is_none());
        assert!(message_id("ses-1-1").ends_with("-000000"));
        assert_eq!(message_id("ses-1-1"), message_id("ses-1-1"));
    }
}
