"""Sends one mail from each of two senders' domains to Understudy's SendGrid door with SendGrid's own
Python library (PyPI `sendgrid`) and prints the answers' statuses as JSON.

Environment: UNDERSTUDY_URL, SENDGRID_API_KEY."""

import json
import os

from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import Mail

sg = SendGridAPIClient(os.environ["SENDGRID_API_KEY"], host=os.environ["UNDERSTUDY_URL"])
out = []
for sender, to in [("news@vip.example", "a@example.com"), ("news@other.example", "b@example.com")]:
    out.append(sg.send(Mail(from_email=sender, to_emails=to, subject="s", plain_text_content="v")).status_code)
print(json.dumps(out))
