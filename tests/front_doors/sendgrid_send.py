"""Sends mail to Understudy's SendGrid door with SendGrid's own Python library (PyPI `sendgrid`), only its
host changed, and prints what came back as JSON.

Environment: UNDERSTUDY_URL, SENDGRID_API_KEY, N (requests to send)."""

import json
import os

from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import Cc, CustomArg, Mail, To

base = os.environ["UNDERSTUDY_URL"]
key = os.environ["SENDGRID_API_KEY"]
n = int(os.environ.get("N", "10"))


def client(api_key=key):
    return SendGridAPIClient(api_key, host=base)


out = {"sent": [], "errors": {}}
sg = client()
for i in range(n):
    mail = Mail(
        from_email="news@shop.example",
        to_emails=[To(f"reader{i}@example.com")],
        subject=f"issue {i}",
        html_content=f"<p>issue {i}</p>",
    )
    mail.personalizations[0].add_cc(Cc(f"archive{i}@example.com"))
    mail.custom_arg = [CustomArg("campaign", "winter"), CustomArg("issue", str(i))]
    r = sg.send(mail)
    out["sent"].append({"status": r.status_code, "message_id": r.headers.get("X-Message-Id"), "body": r.body.decode()})

# The magic recipients, in a mail with links: a click, a hard bounce, a suppressed address.
magic = Mail(from_email="news@shop.example", to_emails=[To("click@understudy.test")], subject="links",
             html_content='<p><a href="https://shop.example/winter?utm=1">winter</a></p>')
magic.personalizations[0].add_cc(Cc("bounce@understudy.test"))
magic.personalizations[0].add_cc(Cc("suppressed@understudy.test"))
magic.custom_arg = [CustomArg("campaign", "winter")]
r = sg.send(magic)
out["magic"] = {"status": r.status_code, "message_id": r.headers.get("X-Message-Id")}


def error(case, call):
    try:
        r = call()
        out["errors"][case] = {"status": r.status_code}
    except HTTPError as e:
        out["errors"][case] = {"status": e.status_code, "body": json.loads(e.body or b"{}")}


good = {"personalizations": [{"to": [{"email": "x@example.com"}]}], "from": {"email": "a@shop.example"},
        "subject": "s", "content": [{"type": "text/plain", "value": "v"}]}
error("bad_key", lambda: client("SG.wrong").client.mail.send.post(request_body=good))
error("no_personalizations", lambda: sg.client.mail.send.post(request_body={**good, "personalizations": []}))
error("bad_address", lambda: sg.client.mail.send.post(
    request_body={**good, "personalizations": [{"to": [{"email": "not-an-address"}]}]}))
error("no_content", lambda: sg.client.mail.send.post(request_body={k: v for k, v in good.items() if k != "content"}))
error("too_large", lambda: sg.client.mail.send.post(
    request_body={**good, "content": [{"type": "text/plain", "value": "x" * 2_000_000}]}))
print(json.dumps(out))
