"""Sends to all four doors of Understudy, with `http.rate_limits` set, through the vendors' own clients
(PyPI `twilio`, `sendgrid`, `boto3`; Meta's payloads over plain HTTP), and prints as JSON what each call
came to: its HTTP status, the vendor's error code, SendGrid's X-RateLimit-* headers.

Environment: UNDERSTUDY_URL, TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, SENDGRID_API_KEY, PHONE_NUMBER_ID,
ACCESS_TOKEN, CALLS (calls to each door)."""

import json
import os
import urllib.error
import urllib.request

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

base = os.environ["UNDERSTUDY_URL"]
calls = int(os.environ.get("CALLS", "5"))
out = {"twilio": [], "sendgrid": [], "ses": [], "whatsapp": []}

twilio = Client(os.environ["TWILIO_ACCOUNT_SID"], os.environ["TWILIO_AUTH_TOKEN"])
twilio.api.base_url = base
for i in range(calls):
    try:
        m = twilio.messages.create(to=f"+1555020{i:04d}", from_="+15005550006", body=f"limited {i}")
        out["twilio"].append({"status": 201, "sid": m.sid})
    except TwilioRestException as e:
        out["twilio"].append({"status": e.status, "code": e.code})

sg = SendGridAPIClient(os.environ["SENDGRID_API_KEY"], host=base)
mail = {"personalizations": [{"to": [{"email": "reader@example.com"}]}], "from": {"email": "news@limited.example"},
        "subject": "s", "content": [{"type": "text/plain", "value": "v"}]}
for i in range(calls):
    try:
        r = sg.client.mail.send.post(request_body=mail)
        status, headers, body = r.status_code, r.headers, None
    except HTTPError as e:
        status, headers, body = e.status_code, e.headers, json.loads(e.body or b"{}")
    out["sendgrid"].append({
        "status": status,
        "limit": headers.get("X-RateLimit-Limit"),
        "remaining": headers.get("X-RateLimit-Remaining"),
        "reset": headers.get("X-RateLimit-Reset"),
        "body": body,
    })

ses = boto3.client("sesv2", endpoint_url=base, region_name="us-east-1", aws_access_key_id="AKIDLIMITED",
                   aws_secret_access_key="secret", config=Config(retries={"total_max_attempts": 1}))
for i in range(calls):
    try:
        # Three recipients a call: SES's send rate counts recipients.
        r = ses.send_email(
            FromEmailAddress="news@limited.example",
            Destination={"ToAddresses": [f"a{i}@example.com", f"b{i}@example.com", f"c{i}@example.com"]},
            Content={"Simple": {"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "t"}}}},
        )
        out["ses"].append({"status": 200, "message_id": r["MessageId"]})
    except ClientError as e:
        out["ses"].append({"status": e.response["ResponseMetadata"]["HTTPStatusCode"], "code": e.response["Error"]["Code"],
                           "message": e.response["Error"]["Message"]})

phone = os.environ["PHONE_NUMBER_ID"]
for i in range(calls):
    payload = {"messaging_product": "whatsapp", "to": f"1555030{i:04d}", "type": "text", "text": {"body": "hi"}}
    req = urllib.request.Request(f"{base}/v21.0/{phone}/messages", data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {os.environ['ACCESS_TOKEN']}"})
    try:
        with urllib.request.urlopen(req) as r:
            out["whatsapp"].append({"status": r.status})
    except urllib.error.HTTPError as e:
        out["whatsapp"].append({"status": e.code, "code": json.loads(e.read())["error"]["code"]})
print(json.dumps(out))
