"""Throughput and latency of ``GET /api/events`` (100 events) against ``GET /health``.

What it measures: a real ``scheduler serve`` process (uvicorn, one worker) on a fresh
database, loaded through the HTTP API with one process and 100 published events (several
kinds and time zones, some recurring). ``wrk`` then hits ``/health`` and ``/api/events``
alternately, ``--rounds`` times each, every run preceded by a warm-up; the best of each
endpoint is kept (highest req/s, lowest p50 and p99) to damp a noisy, shared machine.
``/health`` (one ``SELECT 1``) is the floor of the stack: routing, DI, a pooled session and
serialization. The list is judged relative to it, so the goals hold on any machine:

* ``ratio list/health >= 0.50`` (req/s of the list over req/s of health), and
* ``list p99 <= 20 ms`` at the given number of connections (default 32).

Each run line also gives the server's CPU time per request and the load average: on a
shared machine they tell a slower server from a busier machine. Nothing is asserted on
wall-clock time: the script prints the numbers and MET / MISSED for each goal, and exits 0
either way (1 with ``--strict`` when a goal is missed, 2 when the setup itself failed, 130
on Ctrl-C). The server is always stopped and the temporary
directory (and, for PostgreSQL, the temporary database) removed.

Needs ``wrk`` (Debian package ``wrk``) on PATH. Run from the project root::

    .venv/bin/python tests/bench/bench_events.py
    .venv/bin/python tests/bench/bench_events.py --duration 10 --connections 32
    .venv/bin/python tests/bench/bench_events.py --database postgres --strict

With ``--database postgres`` a database ``fs_bench_<random>`` is created on
``--pg-dsn`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``) with asyncpg and
dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.live_server import cpu_note, cpu_seconds

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
EVENT_COUNT = 100
RATIO_GOAL = 0.50
P99_GOAL_MS = 20.0

KINDS = [
    "review_forum",
    "regional_review",
    "stakeholder_hearing",
    "dialogue_meeting",
    "consultation",
    "round_table",
    "policy_debate",
    "plenary",
    "other",
]
ZONES = [
    "America/New_York",
    "Europe/Zurich",
    "Asia/Bangkok",
    "Africa/Addis_Ababa",
    "America/Santiago",
    "Australia/Sydney",
    "UTC",
]
RRULES = [
    "FREQ=WEEKLY;COUNT=10",
    "FREQ=MONTHLY;BYMONTHDAY=15;COUNT=6",
    "FREQ=YEARLY;COUNT=4",
    "FREQ=DAILY;INTERVAL=2;COUNT=5",
]


class SetupError(RuntimeError):
    """The benchmark could not be set up; its numbers would mean nothing."""


# --- wrk ------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests_per_sec: float
    p50_ms: float
    p99_ms: float
    non_2xx: int = 0
    socket_errors: str = ""


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_RPS = re.compile(r"^\s*Requests/sec:\s*([\d.]+)", re.MULTILINE)
_PERCENTILE = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s*(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors:\s*(.+)")


def to_ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def parse_wrk(output: str) -> WrkResult:
    rps = _RPS.search(output)
    percentiles = {m.group(1): to_ms(m.group(2), m.group(3)) for m in _PERCENTILE.finditer(output)}
    if rps is None or set(percentiles) != {"50", "99"}:
        raise SetupError(f"could not parse wrk output:\n{output}")
    non_2xx = _NON_2XX.search(output)
    errors = _SOCKET_ERRORS.search(output)
    return WrkResult(
        requests_per_sec=float(rps.group(1)),
        p50_ms=percentiles["50"],
        p99_ms=percentiles["99"],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=errors.group(1).strip() if errors else "",
    )


def run_wrk(wrk: str, url: str, connections: int, seconds: int, *, latency: bool) -> str:
    threads = max(1, min(2, connections))
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s"]
    if latency:
        cmd.append("--latency")
    cmd.append(url)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise SetupError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


@dataclass
class Endpoint:
    name: str
    path: str
    runs: list[WrkResult] = field(default_factory=list)

    @property
    def best(self) -> WrkResult:
        return WrkResult(
            requests_per_sec=max(r.requests_per_sec for r in self.runs),
            p50_ms=min(r.p50_ms for r in self.runs),
            p99_ms=min(r.p99_ms for r in self.runs),
            non_2xx=sum(r.non_2xx for r in self.runs),
            socket_errors="; ".join(r.socket_errors for r in self.runs if r.socket_errors),
        )


# --- processes and databases ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scheduler_command() -> str:
    beside = Path(sys.executable).parent / "scheduler"
    if beside.exists():
        return str(beside)
    found = shutil.which("scheduler")
    if found is None:
        raise SetupError("the `scheduler` console script is not installed (pip install -e .)")
    return found


def run_cli(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [scheduler_command(), *args],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise SetupError(f"scheduler {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


async def _pg_admin(dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def postgres_database(dsn: str) -> Iterator[str]:
    """A fresh database on the server of ``dsn``; yields its SQLAlchemy URL, then drops it."""
    name = f"fs_bench_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_pg_admin(dsn, f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        raise SetupError(f"cannot create database {name} on {dsn}: {exc!r}") from exc
    try:
        base = dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        yield f"{base}/{name}"
    finally:
        try:
            asyncio.run(_pg_admin(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        except Exception as exc:
            print(f"warning: could not drop database {name}: {exc!r}", file=sys.stderr)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the server gets SIGTERM if this script dies without cleaning up (kill -9)."""
    with suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


@contextmanager
def running_server(env: dict[str, str], log_path: Path, base_url: str) -> Iterator[int]:
    """The server's process id, once it answers."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [scheduler_command(), "serve"],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us; we stop the server ourselves
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        try:
            wait_healthy(proc, base_url, log_path)
            yield proc.pid
        finally:
            stop(proc)


def wait_healthy(proc: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SetupError(f"server exited with {proc.returncode}:\n{tail(log_path)}")
        try:
            r = httpx.get(f"{base_url}/health", timeout=2)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise SetupError(f"/health not 200 after 60 s (last: {last}):\n{tail(log_path)}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


# --- data -----------------------------------------------------------------------------------


def event_bodies(process_id: int) -> Iterator[dict[str, object]]:
    """100 published events over two years: varied kinds, zones, lengths; every 5th recurs."""
    for i in range(EVENT_COUNT):
        tz = ZoneInfo(ZONES[i % len(ZONES)])
        start = datetime(2030, 1, 7, 9 + i % 8, 30 * (i % 2), tzinfo=tz) + timedelta(days=7 * i)
        end = start + timedelta(hours=1 + i % 4)
        body: dict[str, object] = {
            "process_id": process_id,
            "kind": KINDS[i % len(KINDS)],
            "title": f"Bench event {i:03d}: {KINDS[i % len(KINDS)].replace('_', ' ')}",
            "description": f"Agenda item {i}. " + "Review of implementation progress. " * 8,
            "time_zone": tz.key,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "status": "published",
            "venue": f"Conference room {i % 12 + 1}" if i % 3 else "",
            "online_url": f"https://meet.example.org/bench-{i}" if i % 2 else "",
        }
        if i % 4 == 0:
            body["capacity"] = 50 + i
            body["registration_opens_at"] = (start - timedelta(days=30)).isoformat()
            body["registration_closes_at"] = (start - timedelta(days=2)).isoformat()
        if i % 5 == 0:
            rule = RRULES[(i // 5) % len(RRULES)]
            body["rrule"] = rule
            if rule.startswith("FREQ=WEEKLY"):
                # Wall-clock arithmetic: same local time a week later, an occurrence.
                body["exdates"] = [(start + timedelta(days=7)).isoformat()]
            if "BYMONTHDAY=15" in rule:
                body["start"] = start.replace(day=15).isoformat()
                body["end"] = end.replace(day=15).isoformat()
        yield body


def seed(base_url: str, token: str) -> int:
    """Create one process and 100 events; return the size in bytes of the list answer."""
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        r = client.post(
            "/api/processes",
            json={"slug": "bench", "name": "Bench", "time_zone": "Europe/Zurich"},
            headers=auth,
        )
        if r.status_code != 201:
            raise SetupError(f"POST /api/processes: {r.status_code} {r.text}")
        process_id = int(r.json()["id"])
        for body in event_bodies(process_id):
            r = client.post("/api/events", json=body, headers=auth)
            if r.status_code != 201:
                raise SetupError(f"POST /api/events {body['title']!r}: {r.status_code} {r.text}")
        r = client.get("/api/events")
        if r.status_code != 200:
            raise SetupError(f"GET /api/events: {r.status_code} {r.text}")
        items = r.json()["items"]
        if len(items) != EVENT_COUNT:
            raise SetupError(f"GET /api/events returned {len(items)} items, not {EVENT_COUNT}")
        return len(r.content)


# --- main -----------------------------------------------------------------------------------


def measure(
    wrk: str, base_url: str, endpoints: list[Endpoint], args: argparse.Namespace, server: int
) -> None:
    for round_no in range(1, args.rounds + 1):
        for ep in endpoints:
            url = base_url + ep.path
            if args.warmup > 0:
                run_wrk(wrk, url, args.connections, args.warmup, latency=False)
            cpu = cpu_seconds(server)
            result = parse_wrk(run_wrk(wrk, url, args.connections, args.duration, latency=True))
            ep.runs.append(result)
            note = cpu_note(server, cpu, result.requests_per_sec * args.duration)
            print(
                f"  round {round_no} {ep.name:<12} {result.requests_per_sec:9.1f} req/s"
                f"  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  {note}",
                flush=True,
            )


def report(health: Endpoint, events: Endpoint, connections: int) -> bool:
    """Print the table and the goals; True when both goals are met."""
    print()
    print(f"{'endpoint':<16}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for ep in (health, events):
        b = ep.best
        print(f"{ep.path:<16}{b.requests_per_sec:>10.1f}{b.p50_ms:>10.2f}{b.p99_ms:>10.2f}")
    print(f"(best of {len(events.runs)} runs each: highest req/s, lowest p50 and p99)")
    h, e = health.best, events.best
    for ep in (health, events):
        b = ep.best
        if b.non_2xx or b.socket_errors:
            print(
                f"warning: {ep.path}: {b.non_2xx} non-2xx answers; "
                f"socket errors: {b.socket_errors or 'none'}"
            )
    ratio = e.requests_per_sec / h.requests_per_sec if h.requests_per_sec else 0.0
    ratio_ok = ratio >= RATIO_GOAL
    p99_ok = e.p99_ms <= P99_GOAL_MS
    clean = not (h.non_2xx or e.non_2xx)
    print()
    print(
        f"ratio list/health = {ratio:.2f} (goal >= {RATIO_GOAL:.2f}) "
        f"{'MET' if ratio_ok else 'MISSED'}"
    )
    print(
        f"list p99 = {e.p99_ms:.2f} ms (goal <= {P99_GOAL_MS:.0f} ms at {connections} "
        f"connections) {'MET' if p99_ok else 'MISSED'}"
    )
    return ratio_ok and p99_ok and clean


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per run")
    parser.add_argument("--rounds", type=int, default=2, help="health/list pairs to run")
    parser.add_argument("--pg-dsn", default=DEFAULT_PG_DSN, help="admin DSN for --database")
    args = parser.parse_args(argv)
    if args.duration < 1 or args.connections < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--duration, --connections and --rounds must be >= 1, --warmup >= 0")
    return args


def bench(args: argparse.Namespace) -> bool:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SetupError("wrk not found on PATH (Debian: apt-get install wrk)")
    with tempfile.TemporaryDirectory(prefix="fs-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with (
            postgres_database(args.pg_dsn)
            if args.database == "postgres"
            else _sqlite_url(tmp) as database_url
        ):
            port = free_port()
            base_url = f"http://127.0.0.1:{port}"
            env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
            env.update(
                SCHEDULER_DATABASE_URL=database_url,
                SCHEDULER_HOST="127.0.0.1",
                SCHEDULER_PORT=str(port),
                SCHEDULER_LOG_LEVEL="warning",
                SCHEDULER_DATA_DIR=str(tmp),
            )
            print(f"database: {args.database} ({database_url})", flush=True)
            run_cli(["migrate"], env)
            token = run_cli(["organizer", "create", "--name", "Bench"], env).strip()
            token = token.splitlines()[-1].strip()
            with running_server(env, tmp / "server.log", base_url) as server:
                size = seed(base_url, token)
                print(f"seeded {EVENT_COUNT} events; GET /api/events answers {size} bytes")
                print(
                    f"wrk: {args.connections} connections, {args.duration} s per run "
                    f"(+{args.warmup} s warm-up), {args.rounds} rounds",
                    flush=True,
                )
                health = Endpoint("health", "/health")
                events = Endpoint("list events", "/api/events")
                measure(wrk, base_url, [health, events], args, server)
            return report(health, events, args.connections)


@contextmanager
def _sqlite_url(tmp: Path) -> Iterator[str]:
    yield f"sqlite+aiosqlite:///{tmp / 'bench.db'}"


def _raise_on_sigterm(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        met = bench(args)
    except SetupError as exc:
        print(f"bench setup failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; server stopped and temporary files removed", file=sys.stderr)
        return 130
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
