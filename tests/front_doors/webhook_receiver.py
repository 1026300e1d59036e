"""A webhook receiver that checks every callback with the vendor's own validator and writes one JSON
line per callback to OUT: Twilio's `RequestValidator` (PyPI `twilio`) for `X-Twilio-Signature`.

Environment: OUT (file), TWILIO_AUTH_TOKEN. Prints its port on the first line of stdout."""

import json
import os
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from twilio.request_validator import RequestValidator

validator = RequestValidator(os.environ["TWILIO_AUTH_TOKEN"])
out = open(os.environ["OUT"], "a", buffering=1)
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
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


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
