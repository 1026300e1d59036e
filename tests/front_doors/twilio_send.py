"""Sends messages to Understudy's Twilio front door with Twilio's own Python library (PyPI `twilio`),
only its base URL changed, and prints what came back as JSON: the messages created and the errors.

Environment: UNDERSTUDY_URL, TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, N (messages to send), CALLBACK_URL
(their StatusCallback), BULK_ONLY (only those N SMS, none of the other cases)."""

import json
import os

from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

base = os.environ["UNDERSTUDY_URL"]
account = os.environ["TWILIO_ACCOUNT_SID"]
token = os.environ["TWILIO_AUTH_TOKEN"]
n = int(os.environ.get("N", "20"))
# Status callbacks of the messages sent, when set.
callback = os.environ.get("CALLBACK_URL") or None


def client(sid=account, secret=token):
    c = Client(sid, secret)
    c.api.base_url = base
    return c


def fields(m):
    return {
        "sid": m.sid,
        "status": m.status,
        "to": m.to,
        "from": m.from_,
        "account_sid": m.account_sid,
        "messaging_service_sid": m.messaging_service_sid,
        "body": m.body,
        "num_segments": m.num_segments,
        "date_created": m.date_created.isoformat() if m.date_created else None,
        "direction": m.direction,
        "uri": m.uri,
    }


out = {"created": [], "errors": {}}
c = client()
for i in range(n):
    m = c.messages.create(to=f"+1555010{i:04d}", from_="+15005550006", body=f"message {i}", status_callback=callback)
    out["created"].append(fields(m))
if os.environ.get("BULK_ONLY"):
    print(json.dumps(out))
    raise SystemExit(0)
# WhatsApp through Twilio, and a messaging service.
m = c.messages.create(
    to="whatsapp:+15005559001", from_="whatsapp:+15005550006", body="hello on whatsapp", status_callback=callback
)
out["created"].append(fields(m))
m = c.messages.create(
    to="+15005559002", messaging_service_sid="MG" + "ab" * 16, body="via a service", status_callback=callback
)
out["created"].append(fields(m))


def error(case, call):
    try:
        call()
        out["errors"][case] = None
    except TwilioRestException as e:
        out["errors"][case] = {"code": e.code, "status": e.status, "msg": e.msg}


error("bad_token", lambda: client(secret="wrong").messages.create(to="+15005550001", from_="+15005550006", body="x"))
error("no_body", lambda: c.messages.create(to="+15005550001", from_="+15005550006"))
error("bad_to", lambda: c.messages.create(to="12345", from_="+15005550006", body="x"))
error("long_body", lambda: c.messages.create(to="+15005550001", from_="+15005550006", body="x" * 1601))
error("bad_callback", lambda: c.messages.create(to="+15005550001", from_="+15005550006", body="x", status_callback="ftp://x"))
error("too_large", lambda: c.messages.create(to="+15005550001", from_="+15005550006", body="x" * 2_000_000))
# Twilio's test numbers, as its test credentials answer them: errors of the send call.
error("magic_invalid", lambda: c.messages.create(to="+15005550001", from_="+15005550006", body="x"))
error("magic_cannot_route", lambda: c.messages.create(to="+15005550002", from_="+15005550006", body="x"))
error("magic_unsubscribed", lambda: c.messages.create(to="+15005550004", from_="+15005550006", body="x"))
other = "AC" + "cd" * 16
error("other_account", lambda: client(sid=other).messages.create(to="+15005550001", from_="+15005550006", body="x"))
print(json.dumps(out))
