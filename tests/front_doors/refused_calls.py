"""Sends mail to Understudy's SendGrid and SES doors (PyPI `sendgrid`, `boto3`) from senders a scenario
throttles, from senders in an outage and from others, two recipients a call, and prints each call's HTTP
status (and SES's error code) as JSON.

Environment: UNDERSTUDY_URL, SENDGRID_API_KEY."""

import json
import os

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient

base = os.environ["UNDERSTUDY_URL"]
sg = SendGridAPIClient(os.environ["SENDGRID_API_KEY"], host=base)
ses = boto3.client("sesv2", endpoint_url=base, region_name="us-east-1", aws_access_key_id="AKIDREFUSED",
                   aws_secret_access_key="secret", config=Config(retries={"total_max_attempts": 1}))


def sendgrid(domain, i):
    mail = {"personalizations": [{"to": [{"email": f"a{i}@example.com"}, {"email": f"b{i}@example.com"}]}],
            "from": {"email": f"news@{domain}"}, "subject": "s", "content": [{"type": "text/plain", "value": "v"}]}
    try:
        return sg.client.mail.send.post(request_body=mail).status_code
    except HTTPError as e:
        return e.status_code


def ses_send(domain, i):
    try:
        ses.send_email(FromEmailAddress=f"news@{domain}",
                       Destination={"ToAddresses": [f"a{i}@example.com", f"b{i}@example.com"]},
                       Content={"Simple": {"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "t"}}}})
        return [200, None]
    except ClientError as e:
        return [e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]]


out = {
    "sendgrid": [sendgrid(d, i) for i, d in enumerate(["sg.throttled.example"] * 3 + ["down.example", "ok.example"])],
    "ses": [ses_send(d, i) for i, d in enumerate(["ses.throttled.example"] * 3 + ["down.example", "ok.example"])],
}
print(json.dumps(out))
