//! The SendGrid Mail Send door: `POST /v3/mail/send`, JSON as SendGrid documents it (`personalizations`
//! with `to`/`cc`/`bcc`, `from`, `subject`, `content` or `template_id`, `custom_args`), Bearer auth.
//! One lifecycle per recipient, up to 1,000; `202` with `X-Message-Id` once they are all durable, or
//! SendGrid's `{errors: [...]}`. A scenario's REJECT is SendGrid's `dropped` event, as SendGrid reports
//! suppressions, not an error of the call; a throttle or an outage refuses the call (429, 503). Events go to `http.sendgrid.webhook_url` in signed batches.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Map, Value};

use super::{Door, Item, NotTaken, bearer_accepted, header_key, json_answer, read_body};
use crate::actors::channel::Refuse;
use crate::config::LifecycleKey;
use crate::model::Channel;
use crate::model::Fault;
use crate::plan::Callback;
use crate::wire::Vendor;
use crate::wire::sendgrid::{Sent, write_errors};

/// Recipients of one request, at most.
const MAX_RECIPIENTS: usize = 1000;

/// The size of a request's (or a personalization's) `custom_args`, at most, in bytes of JSON.
const MAX_CUSTOM_ARGS_BYTES: usize = 10_000;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v3/mail/send", web::post().to(send));
}

fn errors(status: u16, errors: &[(&str, Option<&str>)]) -> HttpResponse {
    let mut body = Vec::with_capacity(256);
    write_errors(errors, &mut body);
    json_answer(status, body, None)
}

/// An address as SendGrid takes it: one `@`, something on each side, no spaces.
fn is_email(e: &str) -> bool {
    e.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.'))
        && !e.contains(char::is_whitespace)
        && e.matches('@').count() == 1
}

/// One recipient of a request.
#[derive(Debug, PartialEq)]
struct Recipient {
    email: String,
    custom_args: Map<String, Value>,
}

/// What the door needs of a request, or SendGrid's errors (all of them, as SendGrid lists them).
#[derive(Debug)]
struct Mail {
    from: String,
    recipients: Vec<Recipient>,
    /// The links of its HTML content, which its `click` events click.
    urls: Vec<String>,
}

fn parse(body: &[u8]) -> Result<Mail, Vec<(String, Option<String>)>> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| vec![(format!("Bad Request: the body is not valid JSON ({e})"), None)])?;
    let Some(o) = v.as_object() else {
        return Err(vec![("Bad Request: the body must be a JSON object".into(), None)]);
    };
    let mut errs: Vec<(String, Option<String>)> = Vec::new();
    let mut err = |m: &str, f: &str| errs.push((m.to_owned(), Some(f.to_owned())));
    let from = o.get("from").and_then(|f| f.get("email")).and_then(Value::as_str).unwrap_or("");
    if from.is_empty() {
        err(
            "The from object must be provided for every email send. It is an object that requires the email parameter, but may also contain a name parameter.",
            "from.email",
        );
    } else if !is_email(from) {
        err("The from email does not contain a valid address.", "from.email");
    }
    let template = o.get("template_id").and_then(Value::as_str).is_some_and(|t| !t.is_empty());
    let top_args = o.get("custom_args").and_then(Value::as_object).cloned().unwrap_or_default();
    let personalizations = o.get("personalizations").and_then(Value::as_array).filter(|p| !p.is_empty());
    let mut recipients = Vec::new();
    match personalizations {
        None => err(
            "The personalizations field is required and must have at least one personalization.",
            "personalizations",
        ),
        Some(ps) => {
            let every_subject =
                ps.iter().all(|p| p.get("subject").and_then(Value::as_str).is_some_and(|s| !s.is_empty()));
            let subject = o.get("subject").and_then(Value::as_str).is_some_and(|s| !s.is_empty());
            if !subject && !every_subject && !template {
                err(
                    "The subject is required. You can get around this requirement if you use a template with a subject defined or if every personalization has a subject defined.",
                    "subject",
                );
            }
            for (i, p) in ps.iter().enumerate() {
                let to = p.get("to").and_then(Value::as_array).filter(|t| !t.is_empty());
                if to.is_none() {
                    err(
                        "The to array is required for all personalization objects, and must have at least one email object with a valid email address.",
                        &format!("personalizations.{i}.to"),
                    );
                }
                let mut args = top_args.clone();
                if let Some(a) = p.get("custom_args").and_then(Value::as_object) {
                    args.extend(a.clone());
                }
                for kind in ["to", "cc", "bcc"] {
                    for (j, r) in p.get(kind).and_then(Value::as_array).into_iter().flatten().enumerate() {
                        let email = r.get("email").and_then(Value::as_str).unwrap_or("");
                        if !is_email(email) {
                            err("Does not contain a valid address.", &format!("personalizations.{i}.{kind}.{j}.email"));
                        } else {
                            recipients.push(Recipient { email: email.to_owned(), custom_args: args.clone() });
                        }
                    }
                }
            }
        }
    }
    let content = o.get("content").and_then(Value::as_array).is_some_and(|c| {
        !c.is_empty()
            && c.iter().all(|b| {
                b.get("type").and_then(Value::as_str).is_some()
                    && b.get("value").and_then(Value::as_str).is_some_and(|v| !v.is_empty())
            })
    });
    if !content && !template {
        err(
            "Unless a valid template_id is provided, the content parameter is required. There must be at least one defined content block. We typically suggest both text/plain and text/html blocks are included, but only one block is required.",
            "content",
        );
    }
    let too_long = |a: &Map<String, Value>| serde_json::to_string(a).map_or(0, |s| s.len()) > MAX_CUSTOM_ARGS_BYTES;
    if too_long(&top_args)
        || personalizations
            .into_iter()
            .flatten()
            .any(|p| p.get("custom_args").and_then(Value::as_object).is_some_and(too_long))
    {
        err("The custom_args may not exceed 10,000 bytes.", "custom_args");
    }
    if recipients.len() > MAX_RECIPIENTS {
        err("The total number of recipients must be 1000 or fewer.", "personalizations");
    }
    let html = o.get("content").and_then(Value::as_array).into_iter().flatten().find(|b| b["type"] == "text/html");
    let urls = html.and_then(|b| b["value"].as_str()).map(crate::wire::sendgrid::links).unwrap_or_default();
    if errs.is_empty() { Ok(Mail { from: from.to_owned(), recipients, urls }) } else { Err(errs) }
}

/// `POST /v3/mail/send`.
async fn send(req: HttpRequest, payload: web::Payload, door: web::Data<Door>) -> HttpResponse {
    if !bearer_accepted(&req, &door.settings.sendgrid.api_keys) {
        return errors(401, &[("The provided authorization grant is invalid, expired, or revoked", None)]);
    }
    let bytes = match read_body(payload, door.settings.max_body_bytes).await {
        Ok(Some(b)) => b,
        Ok(None) => return errors(413, &[("Payload Too Large", None)]),
        Err(e) => return errors(400, &[(&format!("Bad Request: cannot read the request ({e})"), None)]),
    };
    let mail = match parse(&bytes) {
        Ok(m) => m,
        Err(list) => {
            let list: Vec<(&str, Option<&str>)> = list.iter().map(|(m, f)| (m.as_str(), f.as_deref())).collect();
            return errors(400, &list);
        }
    };
    let tenant = mail.from.rsplit_once('@').map_or("", |(_, d)| d).to_ascii_lowercase();
    // SendGrid's X-RateLimit-* headers go with every answer a limit applies to, its 429 when it is spent.
    let quota = door.quota(Vendor::Sendgrid, &tenant, 1);
    let with_quota = |mut r: HttpResponse| {
        if let Some(q) = quota {
            let h = r.headers_mut();
            for (name, value) in
                [("x-ratelimit-limit", q.limit), ("x-ratelimit-remaining", q.remaining), ("x-ratelimit-reset", q.reset)]
            {
                h.insert(
                    actix_web::http::header::HeaderName::from_static(name),
                    actix_web::http::header::HeaderValue::from(value),
                );
            }
        }
        r
    };
    if quota.is_some_and(|q| !q.allowed) {
        return with_quota(errors(429, &[("too many requests", None)]));
    }
    // Each recipient's id is the same on every rerun: its lifecycle key (a custom arg, or a header, with
    // the address), else the sender, the recipient and the whole request.
    let request_hash = xxhash_rust::xxh3::xxh3_64(&bytes);
    let header = header_key(&req, door.settings.sendgrid.lifecycle_key.as_ref());
    let mut keyed = Vec::new();
    let items: Vec<(String, Recipient)> = mail
        .recipients
        .into_iter()
        .map(|r| {
            let key = match &door.settings.sendgrid.lifecycle_key {
                Some(LifecycleKey::CustomArg(name)) => match r.custom_args.get(name) {
                    Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                    Some(v) if !v.is_null() && !matches!(v, Value::String(_)) => Some(v.to_string()),
                    _ => None,
                },
                _ => header.map(str::to_owned),
            };
            let id = match key {
                Some(k) => {
                    let id = door.keyed_payload_id("sendgrid", &[tenant.as_bytes(), k.as_bytes(), r.email.as_bytes()]);
                    keyed.push(id.clone());
                    id
                }
                None => door
                    .payload_id("sendgrid", &[mail.from.as_bytes(), r.email.as_bytes(), &request_hash.to_le_bytes()]),
            };
            (id, r)
        })
        .collect();
    // A repeated key gets the first call's answer: its recipients are not taken again.
    let (_held, before) = match door.repeated(&keyed).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look up lifecycle keys");
            return with_quota(errors(503, &[("Service Unavailable", None)]));
        }
    };
    let repeated: std::collections::HashSet<&str> = before.iter().map(|m| m.payload_id.as_str()).collect();
    let message_id = {
        let first = items.first().map_or("", |(id, _)| id.as_str());
        let h = xxhash_rust::xxh3::xxh3_128(first.as_bytes());
        format!("{:022x}", h >> 40)
    };
    let items: Vec<Item> = items
        .into_iter()
        .enumerate()
        .filter(|(_, (payload_id, _))| !repeated.contains(payload_id.as_str()))
        .map(|(index, (payload_id, r))| {
            let sg = &door.settings.sendgrid;
            let callback = crate::config::webhook_for(&sg.webhook_url, &sg.tenant_webhook_urls, &tenant).map(|url| {
                let sent =
                    Sent { message_id: message_id.clone(), index, custom_args: r.custom_args, urls: mail.urls.clone() };
                Callback {
                    vendor: Vendor::Sendgrid,
                    url: url.into(),
                    kafka: door.settings.kafka_acks,
                    data: Some(serde_json::to_string(&sent).expect("serializes").into()),
                }
            });
            Item { payload_id, recipient: r.email.into(), callback }
        })
        .collect();
    if items.is_empty() {
        return with_quota(HttpResponse::Accepted().insert_header(("X-Message-Id", message_id)).finish());
    }
    with_quota(match door.take_all(Channel::Email, &message_id, &tenant, bytes, items, Refuse::Faults).await {
        // A scenario's throttle or outage refuses the call; any other REJECT is a `dropped` event.
        Ok(ref taken) if let Some(step) = taken.iter().flatten().find_map(|t| t.refused.as_ref()) => match step.fault {
            Some(Fault::Outage) => errors(503, &[("Service Unavailable", None)]),
            _ => errors(429, &[("too many requests", None)]),
        },
        Ok(taken) if taken.iter().all(Option::is_some) => {
            HttpResponse::Accepted().insert_header(("X-Message-Id", message_id)).finish()
        }
        Ok(_) => errors(400, &[("The scenario has no email channel", None)]),
        Err(NotTaken::NoBehaviour) => errors(400, &[("The scenario has no email channel", None)]),
        Err(NotTaken::Unavailable) => errors(503, &[("Service Unavailable", None)]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = r#"{"personalizations":[{"to":[{"email":"b@x.test"}],"cc":[{"email":"c@x.test"}],"custom_args":{"k":"p"}}],"from":{"email":"a@x.test"},"subject":"s","content":[{"type":"text/plain","value":"v"}]}"#;

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
    fn requests_get_sendgrids_errors() {
        let fields =
            |s: &str| parse(s.as_bytes()).err().unwrap().into_iter().filter_map(|(_, f)| f).collect::<Vec<_>>();
        assert_eq!(
            fields(r#"{"from":{"email":"a@x.test"},"subject":"s","content":[{"type":"text/plain","value":"v"}]}"#),
            ["personalizations"]
        );
        assert_eq!(
            fields(r#"{"personalizations":[{"to":[{"email":"nope"}]}],"content":[{"type":"text/plain","value":"v"}]}"#),
            ["from.email", "subject", "personalizations.0.to.0.email"]
        );
        assert_eq!(
            fields(r#"{"personalizations":[{"to":[{"email":"b@x.test"}]}],"from":{"email":"a@x.test"},"subject":"s"}"#),
            ["content"]
        );
        let ok = parse(br#"{"personalizations":[{"to":[{"email":"b@x.test"}],"cc":[{"email":"c@x.test"}],"custom_args":{"k":"p"}}],"from":{"email":"a@x.test"},"template_id":"d-1","custom_args":{"k":"top","run":"7"}}"#).unwrap();
        assert_eq!(ok.recipients.len(), 2);
        assert_eq!(ok.recipients[1].email, "c@x.test");
        assert_eq!(ok.recipients[0].custom_args["k"], "p", "a personalization's args win");
        assert_eq!(ok.recipients[0].custom_args["run"], "7");
    }
}
