"""Sends mail to Understudy's SES door with the AWS SDK for Python (PyPI `boto3`, the `sesv2` client), only
its endpoint changed, and prints what came back as JSON.

Environment: UNDERSTUDY_URL, AWS_KEY_ID, AWS_SECRET, N (messages to send, each to two recipients)."""

import base64
import json
import os

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

base = os.environ["UNDERSTUDY_URL"]
n = int(os.environ.get("N", "10"))


def client(key=os.environ["AWS_KEY_ID"], secret=os.environ["AWS_SECRET"]):
    return boto3.client(
        "sesv2",
        endpoint_url=base,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1}),
    )


ses = client()
simple = {"Simple": {"Subject": {"Data": "s"}, "Body": {"Text": {"Data": "t"}, "Html": {"Data": "<p>t</p>"}}}}
out = {"sent": [], "errors": {}}
for i in range(n):
    r = ses.send_email(
        FromEmailAddress="Shop <news@shop.example>",
        Destination={"ToAddresses": [f"reader{i}@example.com"], "CcAddresses": [f"archive{i}@example.com"]},
        Content={"Simple": {**simple["Simple"], "Subject": {"Data": f"issue {i}"}}},
        EmailTags=[{"Name": "campaign", "Value": "winter"}, {"Name": "issue", "Value": str(i)}],
        ConfigurationSetName="events",
    )
    out["sent"].append({"status": r["ResponseMetadata"]["HTTPStatusCode"], "message_id": r["MessageId"]})
r = ses.send_email(
    FromEmailAddress="news@shop.example",
    Destination={"ToAddresses": ["suppressed@understudy.test"]},
    Content=simple,
    ConfigurationSetName="events",
)
out["suppressed"] = r["MessageId"]
mime = b"From: Shop <news@shop.example>\r\nTo: raw@example.com\r\nSubject: raw\r\nMIME-Version: 1.0\r\n\r\nhello\r\n"
out["raw"] = client().send_email(Content={"Raw": {"Data": mime}})["MessageId"]


def error(case, call):
    try:
        call()
        out["errors"][case] = {"status": 200}
    except ClientError as e:
        out["errors"][case] = {
            "status": e.response["ResponseMetadata"]["HTTPStatusCode"],
            "code": e.response["Error"]["Code"],
            "message": e.response["Error"].get("Message", ""),
        }


def send(c=None, **kw):
    args = {"FromEmailAddress": "news@shop.example", "Destination": {"ToAddresses": ["x@example.com"]},
            "Content": simple, **kw}
    return (c or ses).send_email(**args)


error("bad_secret", lambda: send(client(secret="wrong")))
error("unknown_key", lambda: send(client(key="AKIAUNKNOWN000000000")))
error("bad_address", lambda: send(Destination={"ToAddresses": ["not-an-address"]}))
error("too_many", lambda: send(Destination={"ToAddresses": [f"r{i}@example.com" for i in range(51)]}))
error("bad_tag", lambda: send(EmailTags=[{"Name": "bad tag", "Value": "x"}]))
error("too_large", lambda: send(Content={"Raw": {"Data": b"From: a@b.example\r\n\r\n" + b"x" * 2_000_000}}))
print(json.dumps(out))
