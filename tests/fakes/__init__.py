"""Loopback fake servers that speak real HTTP, for tests and benchmarks.

Each fake is a `FakeServer`: a threaded HTTP/1.1 server on 127.0.0.1 and a free port, started in
a background thread (`with SerperFake() as fake:` or `fake.start()` / `fake.stop()`). It records
every request it received (`fake.requests`), and it can be scripted: `fake.queue(method, path,
Reply(...), ...)` makes the next matching requests get those replies, in order, before the fake
falls back to its normal behaviour (`handle`). A `Reply` body may be bytes or an iterable of
chunks; an iterable without a Content-Length is sent chunked and may be endless, which is how
the image host streams a 2 GB file without ever holding it.

Importable as `fakes` (tests/ is on sys.path through conftest.py; benchmarks add it themselves).
"""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import parse_qs, urlsplit


class _Server(ThreadingHTTPServer):
    # The listen backlog is fixed when the socket opens; the default of 5 resets connections (and
    # clients retry them a second later) as soon as a batch opens dozens at once.
    request_queue_size = 512


@dataclass
class Reply:
    status: int = 200
    body: bytes | Iterable[bytes] = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0           # seconds to wait before answering (slow servers, concurrency tests)

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> "Reply":
        return cls(status, json.dumps(obj).encode("utf-8"),
                   {"Content-Type": "application/json", **(headers or {})})

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> "Reply":
        return cls(status, b"", {"Location": location})


@dataclass
class RecordedRequest:
    method: str
    path: str                              # without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]                # names in lower case
    body: bytes
    time: float                            # time.monotonic() when it arrived
    bytes_sent: int = 0                    # response body bytes written before the end or a hang-up

    def json(self) -> Any:
        return json.loads(self.body)

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


class FakeServer:
    """Base of the fakes: override `handle(request) -> Reply`; the default answers 404."""

    def __init__(self, *, tls: tuple[str, str] | None = None):
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._tls = tls
        self._lock = threading.Lock()
        self._scripted: dict[tuple[str, str], deque[Reply]] = defaultdict(deque)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> "FakeServer":
        server = _Server(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        if self._tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*self._tls)
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the fake first"
        return self._server.server_address[1]

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self.host_port}"

    # ---------------------------------------------------------------- scripting

    def queue(self, method: str, path: str, *replies: Reply) -> None:
        with self._lock:
            self._scripted[(method.upper(), path)].extend(replies)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def handle(self, request: RecordedRequest) -> Reply:
        return Reply(404, b"not found\n", {"Content-Type": "text/plain"})

    def _reply_for(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
            scripted = self._scripted.get((request.method, request.path))
            if scripted:
                return scripted.popleft()
        return self.handle(request)


def _handler_for(fake: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:   # keep test output quiet
            pass

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            request = RecordedRequest(self.command, parts.path, parse_qs(parts.query),
                                      {k.lower(): v for k, v in self.headers.items()},
                                      self.rfile.read(length) if length else b"", time.monotonic())
            with fake._lock:
                fake.in_flight += 1
                fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
            try:
                reply = fake._reply_for(request)
                if reply.delay:
                    time.sleep(reply.delay)
                self._send(reply, request)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                self.close_connection = True      # the client hung up, as a size cap should
            finally:
                with fake._lock:
                    fake.in_flight -= 1

        def _send(self, reply: Reply, request: RecordedRequest) -> None:
            self.send_response(reply.status)
            headers = dict(reply.headers)
            body = reply.body
            streamed = not isinstance(body, (bytes, bytearray))
            if streamed and "Content-Length" not in headers:
                headers["Transfer-Encoding"] = "chunked"
            elif not streamed:
                headers.setdefault("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command == "HEAD":
                return
            if not streamed:
                self.wfile.write(body)
                request.bytes_sent = len(body)
                return
            chunked = headers.get("Transfer-Encoding") == "chunked"
            for chunk in body:
                if chunked:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                else:
                    self.wfile.write(chunk)
                request.bytes_sent += len(chunk)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

    return Handler


def make_self_signed_cert(directory: Path, hostname: str) -> tuple[str, str]:
    """A certificate for `hostname` (its own CA) and its key, made with the openssl command."""
    cert, key = directory / f"{hostname}.crt", directory / f"{hostname}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={hostname}",
                    "-addext", f"subjectAltName=DNS:{hostname}"],
                   check=True, capture_output=True)
    return str(cert), str(key)
