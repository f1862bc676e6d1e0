#!/usr/bin/env python3
"""Demo upstream for tenant-guard: answers any method/path with 200 and a JSON body
echoing the request headers it received (so the demo shows the forwarded
x-tenant-id / x-correlation-id / x-tenant-guard-revision). Stdlib only.

Two demo knobs, as an API behind the gateway would behave:
  x-demo-usage: N   answered as `x-tokens: N` (usage the upstream reports, as
                    LLM APIs report tokens);
  x-demo-delay-ms: N  answers after N ms (at most 10 000; a slow request).

Usage: echo_upstream.py [PORT]   (default 18080, binds 127.0.0.1)
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tenant-guard-echo/1"

    def _answer(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        headers = {}
        for name, value in self.headers.items():
            name = name.lower()
            headers[name] = headers[name] + ", " + value if name in headers else value
        body = json.dumps(
            {"method": self.command, "path": self.path, "headers": headers}, indent=2
        ).encode()
        delay = self.headers.get("x-demo-delay-ms", "")
        if delay.isdigit():
            time.sleep(min(int(delay), 10_000) / 1000)
        self.send_response(200)
        usage = self.headers.get("x-demo-usage")
        if usage is not None:
            self.send_header("x-tokens", usage)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

    def log_message(self, fmt, *args):  # keep the demo output readable
        pass


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 18080
    server = ThreadingHTTPServer(("127.0.0.1", port), EchoHandler)
    print(f"echo upstream listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
