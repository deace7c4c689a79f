"""Reminder waves from a real ``scheduler serve`` to a local SMTP sink in its own process.

What it measures, each goal printed MET or MISSED (nothing is asserted; exit 0, 2 when the
sink cannot be started):

(a) throughput: ``--wave`` (10,000) reminders due at once, planned in one transaction
    (tests/reminder_wave.py), sent by the service over ``--pool`` SMTP connections, against
    the sink's own ceiling measured in the same run: the same number of connections blasting
    bytes rendered beforehand (aiosmtplib ``sendmail``, as the service uses). Both rates are
    the sink's: messages over the time from its first to its last arrival. Rounds alternate
    ceiling and service; the best of each is kept. Goal: service >= 0.7 x ceiling. Run on
    SQLite, then on PostgreSQL (``--skip-postgres`` to leave it out).
(b) lateness: ``--lateness`` (10,000) reminders due evenly over ``--window`` (20 s) on
    SQLite, 50 people per event; lateness = arrival at the sink - due time. Goal: p99 <= 1 s.
(c) memory: ``--huge`` (100,000) reminders due at once on SQLite; the service's peak
    resident memory (VmHWM in /proc/<pid>/status), sampled as the wave goes. Goal: < 250 MB.

The sink is aiosmtpd with a handler that writes one line per message (arrival time and
recipient), so the measuring process never shares its CPU.

    .venv/bin/python tests/bench/bench_reminder_wave.py
    .venv/bin/python tests/bench/bench_reminder_wave.py --wave 5000 --skip-huge
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))

import aiosmtplib  # noqa: E402

from scheduler.mail_bytes import MessageFactory, Outgoing  # noqa: E402
from scheduler.models import Event, Notification, utc_now  # noqa: E402
from tests.live_server import LiveServer, cli, fresh_database, server_env  # noqa: E402
from tests.reminder_wave import LANGUAGES, TIME_ZONES, Wave, email_of, seed_wave  # noqa: E402

FROM = "Forum Scheduler <noreply@forum.example.org>"


# --- The sink (run as a child process of this file) ----------------------------------------


def run_sink(port: int, log: Path) -> None:
    """aiosmtpd accepting everything, writing "<arrival time> <recipient>" per message."""
    from aiosmtpd.smtp import SMTP, Envelope, Session

    out = log.open("a", buffering=1 << 16)

    class Handler:
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            out.write(f"{time.time():.6f} {envelope.rcpt_tos[0]}\n")
            return "250 2.0.0 OK"

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(lambda: SMTP(Handler()), "127.0.0.1", port)
        while True:
            await asyncio.sleep(0.1)
            out.flush()

    asyncio.run(serve())


@dataclass
class Sink:
    port: int
    log: Path
    process: subprocess.Popen[bytes]

    def arrivals(self) -> list[tuple[float, str]]:
        rows = []
        for line in self.log.read_text().splitlines():
            stamp, rcpt = line.split(" ", 1)
            rows.append((float(stamp), rcpt))
        return rows

    def count(self) -> int:
        return self.log.read_bytes().count(b"\n")

    def wait_for(self, count: int, seconds: float, watch: Any = None) -> None:
        deadline = time.monotonic() + seconds
        while self.count() < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the sink got {self.count()} of {count} messages")
            if watch is not None:
                watch()
            time.sleep(0.2)


@contextmanager
def sink(folder: Path) -> Iterator[Sink]:
    port = free_port()
    log = folder / f"sink-{port}.log"
    log.touch()
    process = subprocess.Popen(
        [sys.executable, __file__, "--sink", str(port), str(log)], cwd=PROJECT_ROOT
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise SystemExit(2) from None
            time.sleep(0.05)
    try:
        yield Sink(port, log, process)
    finally:
        process.terminate()
        process.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rate(arrivals: list[tuple[float, str]]) -> float:
    times = sorted(t for t, _ in arrivals)
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0


# --- The ceiling: pre-rendered bytes over the same number of connections ------------------


def prerendered(count: int) -> list[Outgoing]:
    """Messages like the service's: the reminder of one event, four languages and zones."""
    now = utc_now()
    start = now + timedelta(hours=1)
    event = Event(
        id=1,
        uid="5b0c1f7e-0000-4000-8000-00000000000a",
        process_id=1,
        kind="dialogue_meeting",
        title="Dialogue 1",
        description="",
        venue="Palais des Nations, Geneva",
        online_url="",
        time_zone="Europe/Zurich",
        starts_at=start,
        ends_at=start + timedelta(hours=3),
        status="published",
        rrule=None,
        exdates=[],
        sequence=0,
        created_at=now,
        updated_at=now,
    )
    context = {
        "event_title": event.title,
        "event_start": event.starts_at.isoformat(),
        "event_end": event.ends_at.isoformat(),
        "event_time_zone": event.time_zone,
        "venue": event.venue,
        "online_url": "",
        "process_name": "Wave review",
    }
    factory = MessageFactory(FROM)
    out = []
    for i in range(count):
        note = Notification(
            id=i + 1,
            kind="event_reminder",
            recipient_email=email_of(i),
            recipient_name=f"Person {i}",
            language=LANGUAGES[i % len(LANGUAGES)],
            time_zone=TIME_ZONES[i % len(TIME_ZONES)],
            context=context,
            reason="",
            message_id="",
            created_at=now,
            event_id=1,
        )
        token = f"{i}.0123456789abcdef0123456789abcdef"
        links = {
            "manage_url": f"http://127.0.0.1:8000/registrations/{token}",
            "confirm_url": f"http://127.0.0.1:8000/registrations/{token}/confirm",
            "event_url": "http://127.0.0.1:8000/api/events/1",
        }
        out.append(factory.build(note, event=event, links=links, now=now))
    return out


async def blast(port: int, messages: list[Outgoing], connections: int) -> None:
    clients = [aiosmtplib.SMTP(hostname="127.0.0.1", port=port) for _ in range(connections)]
    for client in clients:
        await client.connect()
    todo = iter(messages)

    async def send_in_turn(client: aiosmtplib.SMTP) -> None:
        for m in todo:
            options = [] if m.data.isascii() else ["BODY=8BITMIME"]
            await client.sendmail(m.mail_from, list(m.recipients), m.data, mail_options=options)

    await asyncio.gather(*(send_in_turn(c) for c in clients))
    for client in clients:
        await client.quit()


def ceiling(folder: Path, messages: list[Outgoing], connections: int) -> float:
    with sink(folder) as s:
        asyncio.run(blast(s.port, messages, connections))
        s.wait_for(len(messages), 60)
        return rate(s.arrivals())


# --- The service ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm(pid: int, key: str) -> int:
    """A /proc/<pid>/status memory line (VmRSS, VmHWM) in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


@dataclass
class ServiceRun:
    wave: Wave
    arrivals: list[tuple[float, str]]
    peak_kb: int = 0
    samples: list[tuple[int, int]] | None = None  # (delivered, VmRSS kB)
    cpu: float = 0.0  # the service's CPU seconds from its start to the last message


def service_wave(
    folder: Path,
    database: str,
    count: int,
    pool: int,
    *,
    first_due: datetime | None = None,
    spread: timedelta = timedelta(0),
    events: int = 1,
    timeout: float = 600,
) -> ServiceRun:
    """Plan the wave, start the service, and wait until the sink has every message."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"wave-{database}-", dir=folder))
    with fresh_database(database, run_dir) as url, sink(run_dir) as s:
        env = server_env(
            run_dir,
            url,
            SCHEDULER_MAIL_TRANSPORT="smtp",
            SCHEDULER_MAIL_FROM=FROM,
            SCHEDULER_SMTP_HOST="127.0.0.1",
            SCHEDULER_SMTP_PORT=str(s.port),
            SCHEDULER_SMTP_POOL_SIZE=str(pool),
        )
        cli(env, "migrate")
        wave = asyncio.run(seed_wave(url, count, first_due=first_due, spread=spread, events=events))
        server = LiveServer(env)
        server.start()
        assert server.process is not None
        pid = server.process.pid
        cpu_at_start = cpu_seconds(pid)
        samples: list[tuple[int, int]] = []

        def watch() -> None:
            samples.append((s.count(), vm(pid, "VmRSS")))

        try:
            s.wait_for(count, timeout, watch)
            peak = vm(pid, "VmHWM")
            cpu = cpu_seconds(pid) - cpu_at_start
        finally:
            server.stop()
        return ServiceRun(wave, s.arrivals(), peak, samples, cpu)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)]


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


# --- Main ----------------------------------------------------------------------------------


def throughput(folder: Path, database: str, args: argparse.Namespace, lines: list[str]) -> None:
    messages = prerendered(args.wave)
    size = sum(len(m.data) for m in messages[:100]) // 100
    best_ceiling = best_service = 0.0
    for round_ in range(args.rounds):
        top = ceiling(folder, messages, args.pool)
        run = service_wave(folder, database, args.wave, args.pool)
        got = rate(run.arrivals)
        missing = set(run.wave.emails) - {r for _, r in run.arrivals}
        print(
            f"  [{database}] round {round_ + 1}: ceiling {top:7.0f} msg/s, service {got:7.0f} "
            f"msg/s ({got / top:.2f}x, {run.cpu / args.wave * 1e6:.0f} us CPU/msg), "
            f"missing {len(missing)}",
            flush=True,
        )
        best_ceiling, best_service = max(best_ceiling, top), max(best_service, got)
    ratio = best_service / best_ceiling
    lines.append(
        f"(a) {database}: {args.wave} reminders (~{size} bytes) over {args.pool} connections, "
        f"best of {args.rounds}: service {best_service:.0f} msg/s, sink ceiling "
        f"{best_ceiling:.0f} msg/s, ratio {ratio:.2f} (goal >= 0.70): {verdict(ratio >= 0.7)}"
    )


def lateness(folder: Path, args: argparse.Namespace, lines: list[str]) -> None:
    window = timedelta(seconds=args.window)
    first = utc_now() + timedelta(seconds=12)  # the service is up well before
    run = service_wave(
        folder,
        "sqlite",
        args.lateness,
        args.pool,
        first_due=first,
        spread=window,
        events=max(args.lateness // 50, 1),
        timeout=args.window + 300,
    )
    arrived = {r: t for t, r in sorted(run.arrivals, reverse=True)}  # first arrival each
    late = [arrived[e] - run.wave.due[e].timestamp() for e in run.wave.emails if e in arrived]
    p50, p99 = percentile(late, 50), percentile(late, 99)
    early = sum(1 for x in late if x < 0)
    print(
        f"  lateness: {len(late)} delivered, p50 {p50:.3f} s, p99 {p99:.3f} s, "
        f"max {max(late):.3f} s, early {early}",
        flush=True,
    )
    lines.append(
        f"(b) sqlite: {args.lateness} reminders due over {args.window} s: lateness p50 "
        f"{p50:.3f} s, p99 {p99:.3f} s, max {max(late):.3f} s (goal p99 <= 1 s): "
        f"{verdict(p99 <= 1.0 and early == 0 and len(late) == args.lateness)}"
    )


def memory(folder: Path, args: argparse.Namespace, lines: list[str]) -> None:
    started = time.monotonic()
    run = service_wave(folder, "sqlite", args.huge, args.pool, timeout=1800)
    took = time.monotonic() - started
    samples = run.samples or []
    marks = []
    for share in (0.1, 0.5, 0.9):
        at = next((kb for n, kb in samples if n >= share * args.huge), None)
        if at is not None:
            marks.append(f"{int(share * 100)}%: {at / 1024:.0f} MB")
    peak_mb = run.peak_kb / 1024
    missing = len(set(run.wave.emails) - {r for _, r in run.arrivals})
    print(
        f"  huge wave: {args.huge} delivered at {rate(run.arrivals):.0f} msg/s, missing "
        f"{missing}, RSS {', '.join(marks)}, peak {peak_mb:.0f} MB ({took:.0f} s in all)",
        flush=True,
    )
    lines.append(
        f"(c) sqlite: {args.huge} reminders at once: service peak RSS {peak_mb:.0f} MB "
        f"(RSS as it went {', '.join(marks)}) (goal < 250 MB): {verdict(peak_mb < 250)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--wave", type=int, default=10_000)
    parser.add_argument("--lateness", type=int, default=10_000)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--huge", type=int, default=100_000)
    parser.add_argument("--pool", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-lateness", action="store_true")
    parser.add_argument("--skip-huge", action="store_true")
    parser.add_argument("--sink", nargs=2, metavar=("PORT", "LOG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        run_sink(int(args.sink[0]), Path(args.sink[1]))
        return 0

    folder = Path(tempfile.mkdtemp(prefix="fs-bench-wave-"))
    lines: list[str] = []
    started = datetime.now(UTC)
    try:
        throughput(folder, "sqlite", args, lines)
        if not args.skip_postgres:
            throughput(folder, "postgres", args, lines)
        if not args.skip_lateness:
            lateness(folder, args, lines)
        if not args.skip_huge:
            memory(folder, args, lines)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    took = (datetime.now(UTC) - started).total_seconds()
    print(f"\nreminder wave bench ({took:.0f} s)")
    for line in lines:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
