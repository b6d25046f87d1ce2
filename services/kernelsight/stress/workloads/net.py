"""net: an http.server and a raw TCP listener on 127.0.0.1 with client loops (loopback
only)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from typing import Any

from kernelsight.stress.context import Ctx

NAME = "net"
# Loopback request pacing: bounded in time (the deadline) and in rate, hence in count.
HTTP_MAX_PER_S = 300
TCP_BURST = 50
TCP_BURST_EVERY_S = 0.1  # at most 500 short connections per second


def run(ctx: Ctx) -> None:
    """HTTP over loopback (http.server in a thread, urllib client with proxies disabled so
    nothing can leave the machine) plus bursts of short raw TCP connections to a second
    loopback listener. Both client loops are paced, so bounded in count as well as time."""
    import urllib.error
    import urllib.request
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    small = b"ok\n" * 32
    big = os.urandom(64 * 1024)
    served: dict[str, int] = {"server_requests": 0}
    served_lock = threading.Lock()  # handlers run on many threads

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            with served_lock:
                served["server_requests"] += 1

        def do_GET(self) -> None:
            self._reply(big if self.path.startswith("/big") else small)

        def do_POST(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            self._reply(str(len(self.rfile.read(n))).encode())

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    lsock = socket.create_server(("127.0.0.1", 0), backlog=512)
    lsock.settimeout(0.2)
    done = threading.Event()
    hres: dict[str, Any] = {"http_requests": 0, "http_bytes": 0, "http_errors": 0}
    tres: dict[str, Any] = {"tcp_connections": 0, "tcp_bytes": 0, "tcp_errors": 0,
                            "tcp_accepted": 0}

    def acceptor() -> None:
        while not done.is_set():
            try:
                c, _ = lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with c:
                c.settimeout(1)
                with contextlib.suppress(OSError):
                    while c.recv(4096):
                        pass
            tres["tcp_accepted"] += 1

    def http_client() -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        i = 0
        t0 = time.monotonic()
        while ctx.running():
            i += 1
            try:
                if i % 10 == 0:
                    req = urllib.request.Request(f"{base}/upload", data=small * 8, method="POST")
                else:
                    req = urllib.request.Request(f"{base}/big" if i % 4 == 0 else f"{base}/")
                with opener.open(req, timeout=2) as r:
                    hres["http_bytes"] += len(r.read())
                hres["http_requests"] += 1
            except (urllib.error.URLError, OSError):
                hres["http_errors"] += 1
                ctx.nap(0.1)
            ahead = i / HTTP_MAX_PER_S - (time.monotonic() - t0)
            if ahead > 0:
                ctx.nap(ahead)

    def tcp_client() -> None:
        port = lsock.getsockname()[1]
        msg = b"x" * 512
        while ctx.running():
            t = time.monotonic()
            for _ in range(TCP_BURST):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                        s.sendall(msg)
                    tres["tcp_connections"] += 1
                    tres["tcp_bytes"] += len(msg)
                except OSError:  # e.g. EADDRNOTAVAIL when ephemeral ports run out
                    tres["tcp_errors"] += 1
                    ctx.nap(0.5)
                    break
            ctx.nap(TCP_BURST_EVERY_S - (time.monotonic() - t))

    server = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                              daemon=True)
    acc = threading.Thread(target=acceptor, daemon=True)
    clients = [threading.Thread(target=f, daemon=True) for f in (http_client, tcp_client)]
    try:
        server.start()
        acc.start()
        for t in clients:
            t.start()
        for t in clients:
            while t.is_alive():
                t.join(0.2)
    finally:
        done.set()
        if server.is_alive():
            httpd.shutdown()
        httpd.server_close()
        acc.join(1)
        lsock.close()
        ctx.res.update(hres, **tres, **served)
