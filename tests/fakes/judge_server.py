"""A loopback OpenAI-compatible judge: /v1/chat/completions on 127.0.0.1 with scripted replies.

Each request takes the next entry of `script`; when the script is used up, `responder(body)` is
asked (for parallel runs, where request order is not fixed). An entry is either the assistant's
reply text or a `Reply` with an HTTP status (a 429 storm, a 500). Every request body is recorded,
so tests can check what actually reached the server: image order, temperature, model.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class Reply:
    content: str = ""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


def throttled(n: int) -> list[Reply]:
    """`n` rate-limit answers in a row, each telling the client to retry at once."""
    return [Reply(status=429, headers={"Retry-After": "0"}) for _ in range(n)]


def kscore_reply(f: float, v: float, t: float | None, a: float, *, na: bool = False,
                 rationale: str = "Hard constraints: the subject and its markings. Both are right.") -> str:
    obj: dict[str, Any] = {"rationale": rationale, "faithfulness": f, "visual_correctness": v,
                           "text_accuracy": t, "text_accuracy_na": na, "aesthetics": a}
    return json.dumps(obj)


def message_text(body: dict[str, Any]) -> str:
    """All text parts of a request's messages, joined (to find which item a request is about)."""
    parts: list[str] = []
    for m in body.get("messages", []):
        content = m.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [p.get("text", "") for p in content if p.get("type") == "text"]
    return "\n".join(parts)


def image_urls(body: dict[str, Any]) -> list[str]:
    """The data URLs of a request's images, in the order the model sees them."""
    urls: list[str] = []
    for m in body.get("messages", []):
        if isinstance(m.get("content"), list):
            urls += [p["image_url"]["url"] for p in m["content"] if p.get("type") == "image_url"]
    return urls


class FakeJudgeServer:
    def __init__(self, script: list[str | Reply] | None = None,
                 responder: Callable[[dict[str, Any]], str | Reply] | None = None):
        self.script = list(script or [])
        self.responder = responder
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(Reply(status=404, content=f"no route {self.path}"))
                body = json.loads(raw or b"{}")
                with outer._lock:
                    outer.requests.append(body)
                    outer.headers.append(dict(self.headers))
                    entry = outer.script.pop(0) if outer.script else None
                if entry is None:
                    entry = outer.responder(body) if outer.responder else Reply(status=500, content="script used up")
                self._send(entry if isinstance(entry, Reply) else Reply(content=entry), body.get("model"))

            def _send(self, reply: Reply, model: str | None = None) -> None:
                if reply.status == 200:
                    data = {"id": "judge-1", "object": "chat.completion", "model": model,
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": reply.content}}]}
                else:
                    data = {"error": {"message": reply.content or f"scripted HTTP {reply.status}"}}
                payload = json.dumps(data).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> "FakeJudgeServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
