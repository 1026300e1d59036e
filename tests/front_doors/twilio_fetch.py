"""Fetches messages from Understudy's Twilio front door with Twilio's own Python library (PyPI `twilio`),
`client.messages(sid).fetch()`, and prints what came back as JSON: each message's fields, and the errors
of a SID nobody was given and of bad credentials.

Environment: UNDERSTUDY_URL, TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, SIDS (comma-separated)."""

import json
import os

from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

account = os.environ["TWILIO_ACCOUNT_SID"]


def client(secret=os.environ["TWILIO_AUTH_TOKEN"]):
    c = Client(account, secret)
    c.api.base_url = os.environ["UNDERSTUDY_URL"]
    return c


out = {"fetched": {}, "errors": {}}
c = client()
for sid in filter(None, os.environ["SIDS"].split(",")):
    m = c.messages(sid).fetch()
    out["fetched"][sid] = {
        "sid": m.sid,
        "status": m.status,
        "to": m.to,
        "body": m.body,
        "error_code": m.error_code,
        "date_created": m.date_created.isoformat() if m.date_created else None,
        "date_sent": m.date_sent.isoformat() if m.date_sent else None,
        "date_updated": m.date_updated.isoformat() if m.date_updated else None,
    }


def error(case, call):
    try:
        call()
        out["errors"][case] = None
    except TwilioRestException as e:
        out["errors"][case] = {"code": e.code, "status": e.status}


error("unknown_sid", lambda: c.messages("SM" + "0" * 32).fetch())
error("not_a_sid", lambda: c.messages("nope").fetch())
first = os.environ["SIDS"].split(",")[0]
error("bad_token", lambda: client(secret="wrong").messages(first).fetch())
print(json.dumps(out))
