"""A webhook receiver that checks every callback the vendor's own way and writes one JSON line per
callback to OUT: Twilio's `RequestValidator` (PyPI `twilio`) for `X-Twilio-Signature`; for Meta's
`X-Hub-Signature-256`, HMAC-SHA256 of the raw body with the app secret, as Meta documents it; and Meta's
verification handshake (`GET` with `hub.challenge`), answered when `hub.verify_token` is right; and
SendGrid's `EventWebhook.verify_signature` (PyPI `sendgrid`) for its signed event webhook; and for SNS
(SES events), `SNSMessageValidator` (PyPI `aws-sns-message-validator`), which fetches the signing
certificate from the message's `SigningCertURL`; a SubscriptionConfirmation is confirmed by visiting its
`SubscribeURL`, as SNS asks.

Environment: OUT (file), TWILIO_AUTH_TOKEN, META_APP_SECRET, META_VERIFY_TOKEN, SENDGRID_VERIFICATION_KEY,
FAIL_FIRST (answer the first that many webhooks 500, and record them as failed).
Prints its port on the first line of stdout."""

import hashlib
import hmac
import json
import os
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import urllib.request

from sendgrid.helpers.eventwebhook import EventWebhook
from sns_message_validator import SNSMessageValidator
from twilio.request_validator import RequestValidator

validator = RequestValidator(os.environ.get("TWILIO_AUTH_TOKEN", ""))
app_secret = os.environ.get("META_APP_SECRET", "").encode()
verify_token = os.environ.get("META_VERIFY_TOKEN", "")
sendgrid_key = os.environ.get("SENDGRID_VERIFICATION_KEY")
sendgrid = EventWebhook(sendgrid_key) if sendgrid_key else None
fail_first = [int(os.environ.get("FAIL_FIRST") or 0)]
# Understudy serves the certificate itself, not from sns.<region>.amazonaws.com.
sns = SNSMessageValidator(cert_url_regex=r"^http://127\.0\.0\.1:\d+/understudy/sns/")
out = open(os.environ["OUT"], "a", buffering=1)
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def write(self, record):
        with lock:
            out.write(json.dumps(record) + "\n")

    def do_GET(self):
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        ok = query.get("hub.mode") == "subscribe" and query.get("hub.verify_token") == verify_token
        self.write({"path": self.path, "handshake": True, "valid": ok})
        answer = query.get("hub.challenge", "").encode() if ok else b"wrong verify token"
        self.send_response(200 if ok else 403)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with lock:
            fail = fail_first[0] > 0
            fail_first[0] -= 1 if fail else 0
        if fail:
            self.write({"path": self.path, "failed": True})
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        sns_type = self.headers.get("x-amz-sns-message-type")
        if sns_type is not None:
            message = json.loads(body) if self.headers.get("x-amz-sns-rawdelivery") != "true" else None
            record = {"path": self.path, "sns": sns_type, "content_type": self.headers.get("Content-Type")}
            if message is None:
                record["json"] = json.loads(body)
            else:
                try:
                    sns.validate_message(message)
                    record["valid"] = True
                except Exception as e:
                    record["valid"] = False
                    record["error"] = repr(e)
                record["envelope"] = message
                if sns_type == "SubscriptionConfirmation":
                    with urllib.request.urlopen(message["SubscribeURL"]) as r:
                        record["confirmed"] = r.status
                else:
                    record["json"] = json.loads(message["Message"])
            self.write(record)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        sg_signature = self.headers.get("X-Twilio-Email-Event-Webhook-Signature")
        if sg_signature is not None:
            timestamp = self.headers.get("X-Twilio-Email-Event-Webhook-Timestamp", "")
            valid = sendgrid is not None and sendgrid.verify_signature(body.decode(), sg_signature, timestamp)
            self.write(
                {
                    "path": self.path,
                    "content_type": self.headers.get("Content-Type"),
                    "valid": valid,
                    "json": json.loads(body),
                }
            )
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        meta = self.headers.get("X-Hub-Signature-256")
        if meta is not None:
            expected = "sha256=" + hmac.new(app_secret, body, hashlib.sha256).hexdigest()
            self.write(
                {
                    "path": self.path,
                    "content_type": self.headers.get("Content-Type"),
                    "valid": hmac.compare_digest(meta, expected),
                    "json": json.loads(body),
                }
            )
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        params = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
        url = f"http://{self.headers['Host']}{self.path}"
        valid = validator.validate(url, params, self.headers.get("X-Twilio-Signature", ""))
        record = {
            "path": self.path,
            "content_type": self.headers.get("Content-Type"),
            "valid": valid,
            "params": params,
        }
        with lock:
            out.write(json.dumps(record) + "\n")
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT") or 0)), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
