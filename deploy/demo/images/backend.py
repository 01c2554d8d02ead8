"""A demo backend: `backend.py ADDRESS PORT TEXT` answers every GET and
HEAD with TEXT, so a request through Envoy shows which zone served it."""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

address, port, text = sys.argv[1], int(sys.argv[2]), sys.argv[3]
body = (text + "\n").encode()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


ThreadingHTTPServer((address, port), Handler).serve_forever()
