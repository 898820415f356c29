"""A small HTTP API for ``cachedapi dev --upstream`` to front, run as ``python -m tests.dev.origin PORT``.

Every GET answers JSON with what the request looked like (its path and headers) and how
many requests for that path reached this server so far, so a test sees both what the
gateway forwards and whether an answer came from the gateway's cache. Paths under
``/plain/`` answer without Cache-Control (the cache may keep them only by a route's
rule); the others say ``public, max-age=60``. Standard library only.
"""

from __future__ import annotations

import collections
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

counts: collections.Counter[str] = collections.Counter()
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the gateway's client expects

    def do_GET(self) -> None:
        with lock:
            counts[self.path] += 1
            count = counts[self.path]
        body = json.dumps(
            {"path": self.path, "count": count, "headers": {k.lower(): v for k, v in self.headers.items()}}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if not self.path.startswith("/plain/"):
            self.send_header("Cache-Control", "public, max-age=60")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
