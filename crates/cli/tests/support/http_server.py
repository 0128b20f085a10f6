"""A loopback HTTP(S) server for capsa's tests and benchmark.

    python3 http_server.py LOG [CERT KEY]

Listens on 127.0.0.1, an ephemeral port, HTTP/1.1 with keep-alive; TLS when
CERT and KEY (PEM) are given. Prints the port on the first line of stdout,
then serves until killed. Every request is appended to LOG as one JSON line
(method, path, headers, body, the client's port), so a test can tell the server saw nothing.

Paths: /hello, /json, /echo (the request body back), /redirect?to=URL,
/stream?n=N (chunked, no length), /gzip, /cookie/set, /cookie/get,
/stall (never answers), /status/N.
"""

import gzip
import http.server
import json
import ssl
import sys
import threading
import time
import urllib.parse


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are written separately: without this, Nagle's
    # algorithm and the client's delayed ACK add 40 ms to every response.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def _body(self):
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data, True
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n), False

    def _log(self, body, chunked):
        entry = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode("latin-1"),
            "chunked": chunked,
            # One per connection: tells keep-alive from a connection per request.
            "client_port": self.client_address[1],
        }
        with LOCK, open(LOG, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def _send(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self):
        body, chunked = self._body()
        self._log(body, chunked)
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        path = url.path
        if path == "/hello":
            self._send(200, b"hello over http\n", [("content-type", "text/plain")])
        elif path == "/json":
            self._send(200, json.dumps({"ok": True, "n": 42}).encode(), [("content-type", "application/json")])
        elif path == "/echo":
            info = json.dumps({"method": self.command, "body": body.decode("latin-1"), "chunked": chunked,
                               "content_type": self.headers.get("content-type")})
            self._send(200, info.encode(), [("content-type", "application/json")])
        elif path == "/redirect":
            self._send(302, b"", [("location", query["to"])])
        elif path == "/stream":
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for i in range(int(query.get("n", "5"))):
                piece = b"part %d\n" % i
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
                time.sleep(0.01)
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/gzip":
            self._send(200, gzip.compress(b'{"zipped": true}'),
                       [("content-type", "application/json"), ("content-encoding", "gzip")])
        elif path == "/cookie/set":
            self._send(200, b"set\n", [("set-cookie", "flavour=oat; Path=/")])
        elif path == "/cookie/get":
            self._send(200, (self.headers.get("cookie") or "").encode())
        elif path == "/stall":
            time.sleep(3600)
        elif path.startswith("/status/"):
            self._send(int(path.rsplit("/", 1)[1]), b"status\n")
        else:
            self._send(404, b"not found\n")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that gave up (a refused certificate, a timeout)


LOCK = threading.Lock()
LOG = sys.argv[1]
open(LOG, "a").close()
server = Server(("127.0.0.1", 0), Handler)
if len(sys.argv) > 3:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
