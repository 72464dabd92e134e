"""A directory served on loopback the way an index server or a CDN serves it, with the faults
tests need: byte ranges (resumed downloads), a connection cut after N bytes of an archive, a
rate limit (a link slower than loopback)."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


class FileServer:
    """Serve ``root`` on 127.0.0.1 for the duration of a ``with`` block. ``cut``: send only
    that many bytes of a .tar.zst, then close; ``rate``: at most that many bytes a second.
    ``ranges`` records the Range headers asked for."""

    def __init__(self, root: Path, *, cut: int | None = None, rate: int | None = None) -> None:
        self.root, self.cut, self.rate = root, cut, rate
        self.ranges: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = outer.root / self.path.lstrip("/")
                if ".." in self.path or not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                wanted = self.headers.get("Range")
                if wanted:
                    outer.ranges.append(wanted)
                    start = int(wanted.removeprefix("bytes=").partition("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if outer.cut is not None and path.suffix == ".zst":
                    body = body[: outer.cut]
                outer.send(self.wfile, body)
                self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def send(self, out: Any, body: bytes) -> None:
        began = time.monotonic()
        for offset in range(0, len(body), CHUNK):
            out.write(body[offset : offset + CHUNK])
            if self.rate:
                ahead = (offset + CHUNK) / self.rate - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)

    @property
    def base(self) -> str:
        """http://127.0.0.1:PORT, without a trailing slash."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def url(self) -> str:
        """The index's URL."""
        return f"{self.base}/index.json"

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
