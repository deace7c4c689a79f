"""A real pledge feed server on 127.0.0.1 that misbehaves on demand.

It serves one list of records as paged JSON (``/pledges.json?page=N`` with a ``next`` link),
JSON with page numbers (``/numbered.json``), one JSON document (``/all.json``, chunked) and
CSV (``/pledges.csv``, chunked), with ETag and Last-Modified validators that change whenever
the records do (the ETag is each page's own: a page whose content stayed the same keeps
it). Tests queue faults: slow or stalled responses, any status (with Retry-After), bodies
cut off or malformed, wrong content types, oversize bodies, redirects. Every request is
logged (path, headers) so tests can see what the client sent.

Also runs on its own for benchmarks, generating records and printing its port; a line
``edit N`` on its stdin then edits the feed (see ``edited``):

    python tests/feed_server.py --records 100000 --page-size 1000
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

CSV_COLUMNS = (
    "id",
    "title",
    "pledger_name",
    "pledger_type",
    "country",
    "region",
    "pledge_type",
    "matches",
    "form",
    "objectives",
    "status",
    "submitted_at",
    "updated_at",
    "url",
)
_COUNTRIES = ("KEN", "MEX", "PHL", "DEU", "MAR", "BGD", "ECU", "SEN", "TUR", "CAN")
_REGIONS = ("Africa", "Americas", "Asia-Pacific", "Europe", "Arab States")
_PLEDGERS = ("member_state", "stakeholder", "un_system", "other")
_FORMS = ("financial", "human_resource", "process", "policy")
_KINDS = ("single", "common", "partnership")


def pledge(i: int, **changes: Any) -> dict[str, Any]:
    """A valid canonical record, different for each ``i``; ``changes`` override fields."""
    pledger = _PLEDGERS[i % 4]
    record: dict[str, Any] = {
        "id": f"P-{i:06d}",
        "title": f"Pledge {i}: safe and regular pathways for migrant workers",
        "pledger_name": f"Pledger {i % 997}",
        "pledger_type": pledger,
        "country": _COUNTRIES[i % len(_COUNTRIES)] if pledger == "member_state" else "",
        "region": _REGIONS[i % len(_REGIONS)],
        "pledge_type": _KINDS[i % 3] if i % 10 != 9 else "matching",
        "matches": f"P-{i - 1:06d}" if i % 10 == 9 else "",
        "form": _FORMS[(i // 4) % 4],
        "objectives": sorted({1 + i % 23, 1 + (i * 7) % 23}),
        "status": "submitted" if i % 5 else "fulfilled",
        "submitted_at": f"20{22 + i % 4}-{1 + i % 12:02d}-{1 + i % 28:02d}T10:00:00Z",
        "updated_at": "2026-01-15T08:30:00+01:00",
        "url": f"https://pledges.example.org/p/{i}",
    }
    record.update(changes)
    return record


def csv_body(records: list[dict[str, Any]], columns: tuple[str, ...] = CSV_COLUMNS) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for r in records:
        row = []
        for c in columns:
            value = r.get(c, "")
            if isinstance(value, list):
                value = ";".join(str(v) for v in value)
            row.append("" if value is None else str(value))
        writer.writerow(row)
    return out.getvalue().encode()


@dataclass
class Fault:
    """What to do instead of (or on top of) the normal answer, for the next ``times`` hits."""

    # status | slow | stall | truncate | malformed | body | content_type | oversize | redirect
    kind: str
    path: str | None = None  # only requests to this path
    page: int | None = None  # only this page
    times: int = 1  # -1: every time
    status: int = 500
    retry_after: str | None = None
    seconds: float = 0.0
    content_type: str = ""
    location: str = ""
    size: int = 0
    declare_length: bool = True
    body: bytes = b""


@dataclass
class Seen:
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass
class State:
    records: list[dict[str, Any]] = field(default_factory=list)
    page_size: int = 2
    version: int = 1
    modified: float = field(default_factory=time.time)
    validators: bool = True
    send_etag: bool = True  # False: Last-Modified alone
    relative_next: bool = False
    csv_columns: tuple[str, ...] = CSV_COLUMNS
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0  # requests being answered at once, at most (``forget`` resets)
    cache: dict[tuple[str, int, int], bytes] = field(default_factory=dict)
    etags: dict[tuple[str, int, int], str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class FeedServer:
    """The server in a daemon thread; use as a context manager."""

    def __init__(self, records: list[dict[str, Any]] | None = None, page_size: int = 2) -> None:
        self.state = State(records=list(records or []), page_size=page_size)
        state = self.state

        class Handler(_Handler):
            shared = state

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.base = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FeedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def set_records(self, records: list[dict[str, Any]]) -> None:
        """New content: new validators (as a real server's would be)."""
        with self.state.lock:
            self.state.records = list(records)
            self.state.version += 1
            self.state.modified = time.time() + self.state.version  # strictly later
            self.state.cache.clear()
            self.state.etags.clear()

    def fault(self, kind: str, **options: Any) -> None:
        with self.state.lock:
            self.state.faults.append(Fault(kind, **options))

    def clear_faults(self) -> None:
        with self.state.lock:
            self.state.faults.clear()

    @property
    def seen(self) -> list[Seen]:
        with self.state.lock:
            return list(self.state.seen)

    def forget(self) -> None:
        with self.state.lock:
            self.state.seen.clear()
            self.state.most_in_flight = 0


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up on a body it refused is part of the tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    shared: State

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        state = self.shared
        with state.lock:
            state.in_flight += 1
            state.most_in_flight = max(state.most_in_flight, state.in_flight)
        try:
            self._answer()
        finally:
            with state.lock:
                state.in_flight -= 1

    def _answer(self) -> None:
        state = self.shared
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        page = int(query.get("page", "1") or 1)
        with state.lock:
            state.seen.append(
                Seen(parts.path, query, {k.lower(): v for k, v in self.headers.items()})
            )
            fault = self._take_fault(parts.path, page)
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.seconds)
        if fault is not None and fault.kind == "status":
            self._plain(fault.status, b"trouble", retry_after=fault.retry_after)
            return
        if fault is not None and fault.kind == "redirect":
            self.send_response(302)
            self.send_header("Location", fault.location.format(port=self.server.server_address[1]))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        found = self._content(parts.path, page)
        if found is None:
            self._plain(404, b"no such feed")
            return
        body, content_type, streamed, etag = found
        last_modified = formatdate(state.modified, usegmt=True)
        if state.validators and (
            (state.send_etag and self.headers.get("If-None-Match") == etag)
            or (
                self.headers.get("If-Modified-Since") == last_modified
                and "If-None-Match" not in self.headers
            )
        ):
            self.send_response(304)
            if state.send_etag:
                self.send_header("ETag", etag)
            self.end_headers()
            return
        if fault is not None and fault.content_type:
            content_type = fault.content_type
        if fault is not None and fault.kind == "body":
            body = fault.body
        if fault is not None and fault.kind == "malformed":
            # A NUL byte is wrong anywhere in JSON (even in a string) and in CSV.
            body = body[: len(body) // 2] + b"\x00garbage" + body[len(body) // 2 :]
        if fault is not None and fault.kind == "oversize":
            body = b"[" + b" " * fault.size + b"]"
            streamed = not fault.declare_length
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        if state.validators:
            if state.send_etag:
                self.send_header("ETag", etag)
            self.send_header("Last-Modified", last_modified)
        if fault is not None and fault.kind == "truncate":
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if streamed:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i, chunk in enumerate(_chunks(body, 65536)):
                if fault is not None and fault.kind == "stall" and i == 1:
                    time.sleep(fault.seconds)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if fault is not None and fault.kind == "stall":
                self.wfile.write(body[:10])
                self.wfile.flush()
                time.sleep(fault.seconds)
                body = body[10:]
            self.wfile.write(body)

    def _take_fault(self, path: str, page: int) -> Fault | None:
        for fault in self.shared.faults:
            if fault.times == 0:
                continue
            if fault.path is not None and fault.path != path:
                continue
            if fault.page is not None and fault.page != page:
                continue
            if fault.times > 0:
                fault.times -= 1
            return fault
        return None

    def _plain(self, status: int, body: bytes, retry_after: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.end_headers()
        self.wfile.write(body)

    def _content(self, path: str, page: int) -> tuple[bytes, str, bool, str] | None:
        """The body, its content type, whether it is sent in chunks, and its ETag."""
        state = self.shared
        key = (path, page, state.version)
        with state.lock:
            cached = state.cache.get(key)
            records = state.records
            size = state.page_size
        if path == "/pledges.json":
            if cached is None:
                pages = max(1, -(-len(records) // size))
                items = records[(page - 1) * size : page * size]
                nxt: str | None = None
                if page < pages:
                    nxt = f"/pledges.json?page={page + 1}"
                    if not state.relative_next:
                        nxt = f"http://127.0.0.1:{self.server.server_address[1]}{nxt}"
                cached = json.dumps({"items": items, "next": nxt}).encode()
            result = (cached, "application/json", False)
        elif path == "/numbered.json":
            if cached is None:
                pages = max(1, -(-len(records) // size))
                items = records[(page - 1) * size : page * size]
                cached = json.dumps({"page": page, "total_pages": pages, "data": items}).encode()
            result = (cached, "application/json; charset=utf-8", False)
        elif path == "/all.json":
            if cached is None:
                cached = json.dumps({"items": records}).encode()
            result = (cached, "application/json", True)
        elif path == "/pledges.csv":
            if cached is None:
                cached = csv_body(records, state.csv_columns)
            result = (cached, "text/csv; charset=utf-8", True)
        else:
            return None
        with state.lock:
            state.cache[key] = cached
            etag = state.etags.get(key)
        if etag is None:
            etag = '"' + hashlib.blake2b(cached, digest_size=8).hexdigest() + '"'
            with state.lock:
                state.etags[key] = etag
        return (*result, etag)


def _chunks(body: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def edited(records: int, every: int) -> list[dict[str, Any]]:
    """The generated feed a day later: the first 1% gone, every ``every``-th pledge edited,
    and as many new ones as went."""
    gone = records // 100
    return [
        pledge(i, title=f"Pledge {i}: revised") if i % every == 0 else pledge(i)
        for i in range(gone, records + gone)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description="serve generated pledges on 127.0.0.1")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--page-size", type=int, default=1000)
    args = parser.parse_args()
    server = FeedServer([pledge(i) for i in range(args.records)], page_size=args.page_size)
    print(server.port, flush=True)
    threading.Thread(target=server.httpd.serve_forever, daemon=True).start()
    try:
        # "edit N" on stdin: serve edited(records, N) from now on (new validators).
        for line in sys.stdin:
            words = line.split()
            if words[:1] == ["edit"] and len(words) == 2 and words[1].isdigit():
                server.set_records(edited(args.records, int(words[1])))
                print("edited", flush=True)
        threading.Event().wait()  # no more commands: serve until stopped
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()


if __name__ == "__main__":
    sys.exit(main())
