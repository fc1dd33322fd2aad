"""An OpenAI-compatible chat server on 127.0.0.1 that replays scripted assistant turns.

It records every request it receives. A script is a list of turns (the reply to a conversation
is the turn at the index of its assistant-message count) or a function of the request body.
Failure modes: `fail_first` answers the first N requests with an HTTP status (and `fail_body`, e.g.
one that echoes the caller's key as some servers do); `delay_s` waits before every reply (for
throughput measurements); `respond(body, headers, path)` may return a `Raw` reply for any request (any
status, headers and bytes, a body cut short of its Content-Length, or no answer at all), or None
for the scripted turn.

Token ids, as vLLM gives them: a request with `return_token_ids` gets `prompt_token_ids` and
`choices[0].token_ids`, and one with `logprobs` gets per-token log-probs (spelt `token_id:N` with
`return_tokens_as_token_ids`); POST /tokenize renders messages to ids. The fake's tokenizer is
toy but exact: a ChatML-like template whose markers are single ids, every other byte its own id.
`tokens="none"` plays a server that returns no ids or log-probs, `tokens="in_logprobs"` an older
vLLM that spells ids only inside the log-prob entries.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

Script = list[str] | Callable[[dict[str, Any]], str]


@dataclass
class Raw:
    """A reply sent as given. `cut`: declare the whole body's length but send only its first half
    and hang up (a server that dies mid-reply). `hang`: answer nothing until the server stops."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    cut: bool = False
    hang: bool = False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The listen backlog is fixed when the socket opens; the default of 5 drops connections
    # (and clients retry them a second later) as soon as dozens of chats start at once.
    request_queue_size = 512


IM_START, IM_END = 1000, 1001           # the toy tokenizer's two special tokens
_SPECIALS = {"<|im_start|>": IM_START, "<|im_end|>": IM_END}


def toy_tokenize(text: str) -> list[int]:
    """Markers to their ids, every other UTF-8 byte to its value."""
    ids: list[int] = []
    pos = 0
    while pos < len(text):
        marker = next((m for m in _SPECIALS if text.startswith(m, pos)), None)
        if marker:
            ids.append(_SPECIALS[marker])
            pos += len(marker)
        else:
            ids.extend(text[pos].encode("utf-8"))
            pos += 1
    return ids


def toy_template(messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


class FakeChatServer:
    def __init__(self, script: Script, *, delay_s: float = 0.0, fail_first: int = 0, fail_status: int = 500,
                 fail_body: bytes | None = None, raw_reply: bytes | None = None, tokens: str = "full",
                 respond: Callable[[dict[str, Any], dict[str, str], str], Raw | None] | None = None,
                 keep_requests: bool = True):
        self.script = script
        self.keep_requests = keep_requests      # False: count requests only (long fuzz runs)
        self.request_count = 0
        self.fail_body = fail_body
        self.respond = respond
        self._stopped = threading.Event()
        self.delay_s = delay_s
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.raw_reply = raw_reply          # send these bytes as the body instead of a chat reply
        self.tokens = tokens                # "full" | "in_logprobs" | "none"
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                # Without this, Nagle's algorithm and delayed ACKs add ~40 ms to every reply.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path == "/tokenize":
                    if outer.tokens == "none":
                        return self._send(404, b'{"detail": "Not Found"}')
                    ids = toy_tokenize(toy_template(body["messages"], body.get("add_generation_prompt", True)))
                    return self._send(200, json.dumps({"tokens": ids, "count": len(ids)}).encode())
                with outer._lock:
                    if outer.keep_requests:
                        outer.requests.append(body)
                        outer.headers.append(dict(self.headers))
                    outer.request_count += 1
                    n = outer.request_count
                if outer.delay_s:
                    time.sleep(outer.delay_s)
                if n <= outer.fail_first:
                    return self._send(outer.fail_status, outer.fail_body if outer.fail_body is not None else
                                      json.dumps({"error": {"message": "scripted failure"}}).encode())
                raw = outer.respond(body, dict(self.headers), self.path) if outer.respond else None
                if raw is not None:
                    return self._send_raw(raw)
                if outer.raw_reply is not None:
                    return self._send(200, outer.raw_reply)
                if callable(outer.script):
                    text = outer.script(body)
                else:
                    idx = sum(1 for m in body["messages"] if m["role"] == "assistant")
                    text = outer.script[min(idx, len(outer.script) - 1)]
                reply = {"id": f"chatcmpl-{n}", "object": "chat.completion", "model": body.get("model"),
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": text}}],
                         "usage": {"prompt_tokens": 100, "completion_tokens": len(text.split()),
                                   "total_tokens": 100 + len(text.split()),
                                   "prompt_tokens_details": {"cached_tokens": 64}}}
                outer._add_tokens(body, reply, text)
                self._send(200, json.dumps(reply).encode())

            def _send_raw(self, raw: Raw) -> None:
                if raw.hang:
                    outer._stopped.wait()
                    self.close_connection = True
                    return
                self.send_response(raw.status)
                headers = {"Content-Type": "application/json", **raw.headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(raw.body)))
                if raw.cut:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(raw.body[:len(raw.body) // 2] if raw.cut else raw.body)
                if raw.cut:
                    self.wfile.flush()
                    self.close_connection = True

            def _send(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _add_tokens(self, body: dict[str, Any], reply: dict[str, Any], text: str) -> None:
        """What vLLM adds when asked: ids of the prompt and the reply, and per-token log-probs."""
        if self.tokens == "none":
            return
        choice = reply["choices"][0]
        ids = toy_tokenize(text) + [IM_END]          # vLLM's ids end with the end-of-turn token
        if body.get("return_token_ids") and self.tokens == "full":
            reply["prompt_token_ids"] = toy_tokenize(toy_template(body["messages"]))
            choice["token_ids"] = ids
        if body.get("logprobs"):
            as_ids = body.get("return_tokens_as_token_ids")
            choice["logprobs"] = {"content": [
                {"token": f"token_id:{t}" if as_ids else chr(t) if t < 128 else "?",
                 "logprob": -0.01 * (k % 7), "top_logprobs": []} for k, t in enumerate(ids)]}

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> "FakeChatServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stopped.set()
        self._server.shutdown()
        self._server.server_close()


def tool_call(name: str, arguments: dict[str, Any], think: str = "I need more information.") -> str:
    return f"<think>{think}</think>\n<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def answer(gen_prompt: str, refs: list[str] | list[dict[str, str]], think: str = "I have enough.") -> str:
    items = [r if isinstance(r, dict) else {"img_id": r, "note": "use it"} for r in refs]
    return f"<think>{think}</think>\n<answer>{json.dumps({'gen_prompt': gen_prompt, 'reference_images': items})}</answer>"
