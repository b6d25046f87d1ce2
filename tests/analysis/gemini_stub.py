"""A local HTTP server that speaks the Gemini REST API (generateContent) and replays
scripted turns. It stands in for the real API, which the tests cannot reach (no network, no
key): the SDK is pointed at it with its base-URL option."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

Turn = Callable[[dict[str, Any]], dict[str, Any]] | dict[str, Any]


def calls(*fcs: tuple[str, Any]) -> dict[str, Any]:
    """A model turn asking for function calls."""
    return {"parts": [{"functionCall": {"name": n, "args": a}} for n, a in fcs]}


def answer(s: str) -> dict[str, Any]:
    return {"parts": [{"text": s}]}


class GeminiStub:
    def __init__(self, turns: list[Turn], repeat_last: bool = False) -> None:
        self.turns, self.repeat_last = list(turns), repeat_last
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.paths.append(self.path)
                stub.requests.append(body)
                i = len(stub.requests) - 1
                if i >= len(stub.turns) and not stub.repeat_last:
                    self.send_error(500, "script exhausted")
                    return
                turn = stub.turns[min(i, len(stub.turns) - 1)]
                content = turn(body) if callable(turn) else turn
                out = json.dumps({
                    "candidates": [{"content": {"role": "model", **content},
                                    "finishReason": "STOP", "index": 0}],
                    "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 20,
                                      "totalTokenCount": 120}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def function_responses(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The functionResponse parts of the last user turn of a request."""
    last = request["contents"][-1]
    return [p["functionResponse"] for p in last.get("parts", []) if "functionResponse" in p]
