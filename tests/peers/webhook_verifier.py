"""An HTTP subscriber that checks every delivery with the `standardwebhooks`
package (the Standard Webhooks reference implementation, not ours).

Usage: webhook_verifier.py SECRET
Prints `listening PORT` once bound, then one line per POST:
`verified <webhook-id> <body>` (answered 204) or `refused <reason>`
(answered 401). Runs until stdin closes.
"""

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

webhook = Webhook(sys.argv[1])
lock = threading.Lock()


def report(line):
    with lock:
        print(line, flush=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            webhook.verify(body, dict(self.headers.items()), json_parse=False)
        except WebhookVerificationError as e:
            report(f"refused {e}")
            self.send_response(401)
        else:
            report(f"verified {self.headers['webhook-id']} {body.decode()}")
            self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
report(f"listening {server.server_address[1]}")
sys.stdin.read()
server.shutdown()
