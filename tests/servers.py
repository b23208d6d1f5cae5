"""Real HTTP servers on 127.0.0.1 for the tests: the shared mirror of the site, and one that misbehaves."""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit


class QuietFileHandler(SimpleHTTPRequestHandler):
    """Serves a folder like the real site, without logging every request to stderr."""

    def log_message(self, format: str, *args) -> None:
        pass


class QuietHTTPServer(ThreadingHTTPServer):
    """Does not print a traceback when a client hangs up on purpose (our time-out tests do)."""

    def handle_error(self, request, client_address) -> None:
        pass


class LoopbackServer:
    """A ThreadingHTTPServer on a free loopback port, run in a daemon thread."""

    def __init__(self, handler):
        self.httpd = QuietHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve_folder(folder: Path) -> LoopbackServer:
    return LoopbackServer(partial(QuietFileHandler, directory=str(folder)))


def page_html(title: str) -> bytes:
    """A small transcript page in the site's layout, with original text."""
    return (
        "<html><body><p><b>" + title + "</b><br>Stardate: 12345.6<br>Original Airdate: 1 Jan, 2001<br></p>"
        "<table><tr><td><b>[Test Lab]</b><p>TESTER: This is page " + title + ". <br>"
        "(The tester nods)</p></td></tr></table></body></html>"
    ).encode("utf-8")


def index_html(pages: list[str], extra_hrefs: tuple[str, ...] = ()) -> bytes:
    """An ``episodes.htm`` in the site's layout that links ``pages``, then the links in ``extra_hrefs``."""
    hrefs = list(pages) + list(extra_hrefs)
    rows = "".join(f'<tr><td><a href="{href}">Episode {href}</a></td><td>{i}</td></tr>' for i, href in enumerate(hrefs))
    return f"<html><body><h2>Season 1</h2><table>{rows}</table></body></html>".encode()


def write_site(folder: Path, pages: dict[str, bytes], extra_hrefs: tuple[str, ...] = ()) -> Path:
    """A copy of the site in ``folder``: ``DS9/episodes.htm`` linking ``pages`` (name -> bytes), and the pages."""
    (folder / "DS9").mkdir(parents=True, exist_ok=True)
    (folder / "DS9" / "episodes.htm").write_bytes(index_html(list(pages), extra_hrefs))
    for name, body in pages.items():
        (folder / "DS9" / name).write_bytes(body)
    return folder


# What each page of the faulty site does, attempt by attempt; the last behaviour repeats.
FAULT_SCRIPT = {
    "901.htm": ["500", "ok"],
    "902.htm": ["429", "ok"],
    "903.htm": ["stall", "ok"],
    "904.htm": ["truncate"],
    "905.htm": ["404"],
    "906.htm": ["reset", "ok"],
    "907.htm": ["truncate", "ok"],
}


def fault_index() -> bytes:
    rows = "".join(f'<tr><td><a href="{page}">Fault {page}</a></td><td>{page[:3]}</td></tr>' for page in FAULT_SCRIPT)
    escapes = (
        '<tr><td><a href="../../x.htm">Escape</a></td></tr>'
        '<tr><td><a href="/etc/passwd">Root</a></td></tr>'
        '<tr><td><a href="http://example.invalid/999.htm">Elsewhere</a></td></tr>'
        '<tr><td><a href="..%2F..%2F998.htm">Encoded</a></td></tr>'
    )
    return f"<html><body><h2>Season 1</h2><table>{rows}{escapes}</table></body></html>".encode()


class FaultLog:
    """What a misbehaving server saw: attempts per page, when each came, User-Agents, and the paths asked for."""

    def __init__(self):
        self.attempts: Counter = Counter()
        self.times: dict[str, list[float]] = {}
        self.user_agents: list[str] = []
        self.paths: list[str] = []


class MisbehavingHandler(QuietFileHandler):
    """Answers in one of the ways a real server goes wrong, and records every request in ``log``."""

    log: FaultLog  # set per server
    stall_seconds = 2.0

    def _record(self) -> str:
        """Log this request; return the page it asks for (the path's last part, without a query)."""
        name = self.path.split("?", 1)[0].rsplit("/", 1)[-1]
        self.log.attempts[name] += 1
        self.log.times.setdefault(name, []).append(time.monotonic())
        self.log.user_agents.append(self.headers.get("User-Agent", ""))
        self.log.paths.append(self.path)
        return name

    def misbehave(self, action: str, name: str, body: bytes) -> None:
        """Answer with ``body`` as ``action`` says: "ok", or one of the faults below."""
        if action == "ok":
            self._send(200, body)
        elif action in ("500", "503", "404"):
            self._send(int(action), b"something went wrong")
        elif action == "429":
            self._send(429, b"slow down", {"Retry-After": "1"})
        elif action == "empty":
            self._send(200, b"")
        elif action == "random":
            self._send(200, random.Random(name).randbytes(len(body)))
        elif action == "stall":
            time.sleep(self.stall_seconds)
            self._send(200, body)
        elif action == "truncate":
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_WR)
        elif action == "reset":
            # SO_LINGER with a zero timeout makes close() send a TCP RST: a "connection reset by peer".
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
        elif action == "redirect off site":
            self._send(302, b"", {"Location": f"http://example.invalid/DS9/{name}"})
        elif action == "redirect on site":
            self._send(301, b"", {"Location": f"/DS9/{name}?moved=1"})
        else:
            raise ValueError(f"unknown fault {action!r}")

    def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class FaultyHandler(MisbehavingHandler):
    """A made-up site that plays FAULT_SCRIPT."""

    def do_GET(self) -> None:
        name = self._record()
        if self.path == "/DS9/episodes.htm":
            return self._send(200, fault_index())
        script = FAULT_SCRIPT.get(name)
        if script is None or not self.path.startswith("/DS9/"):
            return self._send(404, b"not here")
        self.misbehave(script[min(self.log.attempts[name], len(script)) - 1], name, page_html(name))


class FirstRequestFaultHandler(MisbehavingHandler):
    """Serves a folder like the real site, but the first request for each page in ``faults`` misbehaves."""

    faults: dict[str, str]  # page name -> fault; set per server

    def do_GET(self) -> None:
        name = self._record()
        fault = self.faults.get(name)
        if fault is None or self.log.attempts[name] > 1:
            return super().do_GET()
        self.misbehave(fault, name, (Path(self.directory) / "DS9" / name).read_bytes())


class SilentHandler(QuietFileHandler):
    """Accepts every request and never answers it (until the server closes)."""

    log: FaultLog
    closing: threading.Event

    def do_GET(self) -> None:
        self.log.attempts[self.path.rsplit("/", 1)[-1]] += 1
        self.log.paths.append(self.path)
        self.closing.wait()
        self.close_connection = True


class DripHandler(QuietFileHandler):
    """Sends a whole answer one byte at a time, ``interval`` seconds apart: from its status line on
    (``where="headers"``), or a prompt status line and headers and then the body (``where="body"``).
    Every byte resets a socket time-out, so only a wall-clock deadline stops a client."""

    log: FaultLog
    where: str
    interval = 1.0

    def do_GET(self) -> None:
        self.log.attempts[self.path.rsplit("/", 1)[-1]] += 1
        body = page_html("drip")
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        if self.where == "body":
            self.wfile.write(head)
            self.wfile.flush()
        for byte in (head if self.where == "headers" else b"") + body:
            time.sleep(self.interval)
            try:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            except OSError:  # the client hung up: what it should do
                return
        self.close_connection = True


class RelayProxyHandler(QuietFileHandler):
    """An HTTP proxy that relays each answer byte for byte as it arrives, as a real proxy does."""

    def do_GET(self) -> None:
        parts = urlsplit(self.path)  # a proxy is asked for the whole address
        with socket.create_connection((parts.hostname, parts.port)) as upstream:
            upstream.sendall(f"GET {parts.path} HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n".encode())
            while piece := upstream.recv(1024):
                self.wfile.write(piece)
                self.wfile.flush()
        self.close_connection = True


def make_drip_server(where: str) -> tuple[LoopbackServer, FaultLog]:
    """A site whose every answer comes at one byte per second, from the headers or from the body on."""
    return _serve(DripHandler, where=where)


def _serve(handler: type, folder: Path | None = None, **attributes) -> tuple[LoopbackServer, FaultLog]:
    log = FaultLog()
    handler_class = type(handler.__name__, (handler,), {"log": log, **attributes})
    return LoopbackServer(partial(handler_class, directory=str(folder) if folder else None)), log


def make_fault_server() -> tuple[LoopbackServer, FaultLog]:
    """The made-up site of FAULT_SCRIPT."""
    return _serve(FaultyHandler)


def make_first_request_fault_server(folder: Path, faults: dict[str, str], stall_seconds: float = 2.0):
    """``folder`` served as the site, where the first request for each page in ``faults`` goes wrong that way."""
    return _serve(FirstRequestFaultHandler, folder, faults=faults, stall_seconds=stall_seconds)


class SilentServer(LoopbackServer):
    """A server that accepts connections and never answers; ``close`` lets the waiting handlers go."""

    def __init__(self):
        self.log = FaultLog()
        self.closing = threading.Event()
        super().__init__(type("Silent", (SilentHandler,), {"log": self.log, "closing": self.closing}))

    def close(self) -> None:
        self.closing.set()
        super().close()
