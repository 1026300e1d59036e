"""Calls each of Understudy's doors twice with the same lifecycle key, once with another, and Twilio's
five times at once with one key, through the vendors' own clients (PyPI `twilio` with an idempotency
header added to its HTTP client, `sendgrid` with a custom arg, `boto3` with an EmailTag; Meta's payloads
with `biz_opaque_callback_data`), and prints the ids each call was answered with as JSON.

Environment: UNDERSTUDY_URL, TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, SENDGRID_API_KEY, PHONE_NUMBER_ID,
ACCESS_TOKEN."""

import json
import os
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import Cc, CustomArg, Mail, To
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

base = os.environ["UNDERSTUDY_URL"]
out = {}


class Keyed(TwilioHttpClient):
    """Twilio's own HTTP client, sending an idempotency header with each request."""

    def __init__(self, key):
        super().__init__()
        self.key = key

    def request(self, method, url, params=None, data=None, headers=None, **kw):
        return super().request(method, url, params, data, {**(headers or {}), "Idempotency-Key": self.key}, **kw)


def twilio(key, body="keyed"):
    c = Client(os.environ["TWILIO_ACCOUNT_SID"], os.environ["TWILIO_AUTH_TOKEN"], http_client=Keyed(key))
    c.api.base_url = base
    m = c.messages.create(to="+15550401000", from_="+15005550006", body=body)
    return {"sid": m.sid, "status": m.status, "body": m.body, "date_created": m.date_created.isoformat()}


# The second call's body differs: the key names the message, and the first answer is what comes back.
out["twilio"] = [twilio("order-1"), twilio("order-1", body="sent again"), twilio("order-2")]
with ThreadPoolExecutor(5) as pool:
    out["twilio_at_once"] = [m["sid"] for m in pool.map(lambda _: twilio("order-3"), range(5))]

sg = SendGridAPIClient(os.environ["SENDGRID_API_KEY"], host=base)


def sendgrid(key):
    mail = Mail(from_email="news@keys.example", to_emails=[To("reader@example.com")], subject="s",
                plain_text_content="v")
    mail.personalizations[0].add_cc(Cc("archive@example.com"))
    mail.custom_arg = [CustomArg("msg_id", key)]
    return sg.send(mail).headers.get("X-Message-Id")


out["sendgrid"] = [sendgrid("mail-1"), sendgrid("mail-1"), sendgrid("mail-2")]

ses = boto3.client("sesv2", endpoint_url=base, region_name="us-east-1", aws_access_key_id="AKIDKEYS",
                   aws_secret_access_key="secret", config=Config(retries={"total_max_attempts": 1}))


def ses_send(key):
    return ses.send_email(
        FromEmailAddress="news@keys.example",
        Destination={"ToAddresses": ["reader@example.com"]},
        Content={"Simple": {"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "t"}}}},
        EmailTags=[{"Name": "msg_id", "Value": key}],
    )["MessageId"]


out["ses"] = [ses_send("ses-1"), ses_send("ses-1"), ses_send("ses-2")]


def whatsapp(key):
    payload = {"messaging_product": "whatsapp", "to": "15550402000", "type": "text", "text": {"body": "hi"},
               "biz_opaque_callback_data": key}
    req = urllib.request.Request(f"{base}/v21.0/{os.environ['PHONE_NUMBER_ID']}/messages",
                                 data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {os.environ['ACCESS_TOKEN']}"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())["messages"][0]["id"]


out["whatsapp"] = [whatsapp("wa-1"), whatsapp("wa-1"), whatsapp("wa-2")]
print(json.dumps(out))
