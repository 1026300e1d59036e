"""Sends messages to Understudy's WhatsApp Cloud API door over plain HTTP with Meta's own payloads (as
its documentation gives them), only the base URL changed, and prints what came back as JSON.

Environment: UNDERSTUDY_URL, PHONE_NUMBER_ID, ACCESS_TOKEN, N (messages to send)."""

import json
import os
import urllib.error
import urllib.request

base = os.environ["UNDERSTUDY_URL"]
phone = os.environ["PHONE_NUMBER_ID"]
token = os.environ["ACCESS_TOKEN"]
n = int(os.environ.get("N", "20"))


def post(payload, version="v21.0", bearer=token, raw=None):
    data = raw if raw is not None else json.dumps(payload).encode()
    req = urllib.request.Request(
        f"{base}/{version}/{phone}/messages",
        data=data,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {bearer}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def text(to, body, **extra):
    return {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to, "type": "text",
            "text": {"preview_url": False, "body": body}, **extra}


out = {"sent": [], "errors": {}}
for i in range(n):
    out["sent"].append(post(text(f"1555010{i:04d}", f"message {i}", biz_opaque_callback_data=f"run-7/{i}")))
out["sent"].append(post({"messaging_product": "whatsapp", "to": "15550109999", "type": "template",
                         "template": {"name": "hello_world", "language": {"code": "en_US"}}}))


def error(case, status_and_body):
    status, body = status_and_body
    out["errors"][case] = {"status": status, "error": body.get("error")}


error("bad_token", post(text("15550100001", "x"), bearer="wrong"))
error("no_to", post({"messaging_product": "whatsapp", "type": "text", "text": {"body": "x"}}))
error("not_json", post(None, raw=b"{nope"))
error("no_product", post({"to": "15550100001", "type": "text", "text": {"body": "x"}}))
error("too_large", post(text("15550100001", "x" * 2_000_000)))
error("bad_version", post(text("15550100001", "x"), version="21"))
# The scenario's magic numbers: send-time errors, as Meta answers them.
error("rate_limited", post(text("15005551004", "x")))
error("recipient_is_sender", post(text("15005551005", "x")))
print(json.dumps(out))
