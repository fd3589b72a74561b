"""The HTTP side of the fake provider: the request handler and the `/_fake/...` control API."""

from __future__ import annotations

import json
import select
import socket
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from testkit.fake_limits import error_body

if TYPE_CHECKING:
    from testkit.fake_provider import FakeProvider


class Hangup(Exception):
    """Close the connection without (the rest of) a response."""


class Traffic:
    """What happened to the provider requests on the wire: received, open now, answered in full
    (by status), and charged answers the client never received in full ("undelivered": it was
    killed, timed out or hung up while the answer was on its way, or the stream was broken).

    A request counts as answered once its last byte is written, so a client holding its whole
    answer may, for a moment, still see it `in_flight`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, int] = {}  # id(call marker) -> client port
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.received = 0
            self.answered: Counter[int] = Counter()
            self.undelivered = 0
            self.undelivered_tokens = 0

    def opened(self, marker: object, client_port: int) -> None:
        with self._lock:
            self.received += 1
            self._open[id(marker)] = client_port

    def closed(self, marker: object, *, status: int, delivered: bool, tokens: int) -> None:
        """`tokens`: what the request was charged (0 for refusals and errors)."""
        with self._lock:
            self._open.pop(id(marker), None)
            if delivered:
                self.answered[status] += 1
            elif tokens:
                self.undelivered += 1
                self.undelivered_tokens += tokens

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "received": self.received,
                "in_flight": len(self._open),
                "in_flight_ports": sorted(self._open.values()),
                "answered": {str(k): v for k, v in sorted(self.answered.items())},
                "undelivered": self.undelivered,
                "undelivered_tokens": self.undelivered_tokens,
            }


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True  # a hung or idle connection never holds up stop()
    block_on_close = False
    request_queue_size = 512  # benchmarks open many connections at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client went away: normal for tests of broken connections
        super().handle_error(request, client_address)


class FakeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked streams, as the SDKs expect
    server_version = "fake-provider/1"
    timeout = 120  # idle keep-alive connections end after this
    disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls between header and body writes
    fake: FakeProvider

    def setup(self) -> None:
        super().setup()
        self.fake._track(self.connection, add=True)

    def finish(self) -> None:
        self.fake._track(self.connection, add=False)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests and benchmarks read `calls` instead

    def _read_body(self) -> bytes:
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path
        raw = self._read_body()
        try:
            if path.startswith("/_fake/"):
                return control(self.fake, self, method, path, raw)
            clean = path.rstrip("/")
            if method == "POST" and (clean.endswith("/chat/completions") or clean == "/v1/messages"):
                return self.fake.handle(self, path, raw)
            self.send_json(404, error_body("openai", 404, f"Unknown request URL: {method} {path}"))
        except (Hangup, OSError):
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def peer_gone(self) -> bool:
        """The client closed its end (it died or gave up): an answer would go nowhere. A
        keep-alive client sends nothing while it waits, so a readable socket means EOF."""
        try:
            poller = select.poll()  # not select(): no limit on the descriptor's number
            poller.register(self.connection, select.POLLIN)
            if not poller.poll(0):
                return False  # nothing to read: still there, waiting
            return bool(self.connection.recv(1, socket.MSG_PEEK) == b"")
        except OSError:
            return True

    def send_json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def start_stream(self, headers: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.flush()

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def handler_for(fake: FakeProvider) -> type[FakeHandler]:
    return type("FakeProviderHandler", (FakeHandler,), {"fake": fake})


def control(fake: FakeProvider, h: FakeHandler, method: str, path: str, raw: bytes) -> None:
    """`GET /_fake/stats`; `POST /_fake/{reset,fail_next,mode,consume,latency,fail_stream_after,
    faults}` with JSON arguments. Answers the stats as JSON."""
    try:
        args = json.loads(raw) if raw else {}
        if method == "GET" and path == "/_fake/stats":
            return h.send_json(200, fake.stats())
        if method != "POST":
            return h.send_json(405, {"error": f"use POST for {path}"})
        if path == "/_fake/reset":
            fake.reset()
        elif path == "/_fake/fail_next":
            fake.fail_next(
                int(args.get("n", 1)),
                status=int(args["status"]),
                retry_after_s=args.get("retry_after_s"),
                body=args.get("body"),
            )
        elif path == "/_fake/mode":
            fake.set_mode(args["mode"])
        elif path == "/_fake/consume":
            fake.consume(int(args["tokens"]))
        elif path == "/_fake/latency":
            fake.latency_s = float(args["latency_s"])
        elif path == "/_fake/fail_stream_after":
            fake.fail_stream_after(int(args["chunks"]))
        elif path == "/_fake/faults":
            fake.set_faults(error_rate=args.get("error_rate"),
                            truncate_rate=args.get("truncate_rate"), seed=args.get("seed"))
        else:
            return h.send_json(404, {"error": f"no control endpoint {path}"})
    except (KeyError, TypeError, ValueError) as exc:
        return h.send_json(400, {"error": f"bad control request: {exc!r}"})
    h.send_json(200, {"ok": True, **fake.stats()})
