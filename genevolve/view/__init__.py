"""A local, read-only web view of the records this project writes.

    genevolve view runs/a runs/b data/bench          # then open the printed address

Runs (`run`, `render`, `judge`, `bench` folders), data files, training runs and single `generate`
results, found under the folders given; images are served only from those folders (and any
`image_roots`). `open_result(path)` shows one `generate` result; `ViewServer` runs the app in a
background thread.
"""

from __future__ import annotations

import threading
import time
import webbrowser
from pathlib import Path
from typing import Iterable
from urllib.parse import quote

__all__ = ["ViewServer", "create_app", "open_result"]


def create_app(paths: Iterable[str | Path], image_roots: Iterable[str | Path] = ()):
    from .app import create_app as make
    return make(paths, image_roots)


class ViewServer:
    """The viewer on a loopback port, served from a background thread until `stop()`."""

    def __init__(self, paths: Iterable[str | Path], *, host: str = "127.0.0.1", port: int = 0,
                 image_roots: Iterable[str | Path] = ()):
        import uvicorn

        self.app = create_app(list(paths), image_roots)
        self.host = host
        self._server = uvicorn.Server(uvicorn.Config(self.app, host=host, port=port, log_level="warning",
                                                     access_log=False, lifespan="off"))
        self._server.install_signal_handlers = lambda: None    # type: ignore[method-assign]  # Ctrl-C is the caller's
        self._thread = threading.Thread(target=self._server.run, name="genevolve-view", daemon=True)
        self.port = port

    def start(self, timeout_s: float = 30.0) -> "ViewServer":
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"the viewer could not listen on {self.host}:{self.port}")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def wait(self) -> None:
        """Block until Ctrl-C (or `stop()` from another thread), then stop."""
        try:
            while self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(10)


def open_result(path: str | Path, *, host: str = "127.0.0.1", port: int = 0,
                image_roots: Iterable[str | Path] = (), open_browser: bool = True) -> tuple[ViewServer, str]:
    """Serve one `generate` result (its out.json) and return the started server and the item's address.

    Images are served from the file's folder and `image_roots` (pass the image library's folder
    to see the references image_search found). The caller prints the address and calls
    `server.wait()`; with `open_browser` the system browser is asked to open it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    server = ViewServer([path], host=host, port=port, image_roots=image_roots).start()
    address = f"{server.url}item?src={quote(_only_key(server))}&id={quote(path.stem)}"
    if open_browser:
        webbrowser.open(address)
    return server, address


def _only_key(server: ViewServer) -> str:
    sources = server.app.state.viewer.catalog.sources
    if not sources:
        raise ValueError("the file is not a result the viewer can read")
    return next(iter(sources))
