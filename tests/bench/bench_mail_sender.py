"""Messages per second through ``SmtpSender`` to a local aiosmtpd, pool of 4 against pool of 1.

What it measures: ``--messages`` (default 1000) rendered confirmation mails (text, HTML and
an ICS attachment, ~6 kB each) sent concurrently through one ``SmtpSender``; the time
includes MIME flattening and the SMTP dialogue, not rendering. The server is
``python -m aiosmtpd`` with the ``Sink`` handler in its own process, so it does not share
the GIL with the client. Each pool size runs ``--rounds`` times after a warm-up; the best
round is kept. The pool-of-1 run is the baseline in the same run, so the ratio holds on any
machine. Nothing is asserted; exit 0 (2 when the server cannot be started).

    .venv/bin/python tests/bench/bench_mail_sender.py
    .venv/bin/python tests/bench/bench_mail_sender.py --messages 5000 --pool 8
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))

from scheduler.mail import SmtpSender  # noqa: E402
from scheduler.mail_render import render  # noqa: E402
from scheduler.models import Event, Notification  # noqa: E402
from scheduler.settings import Settings  # noqa: E402

NOW = datetime(2030, 3, 1, 9, 0, tzinfo=UTC)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Sink"]
    proc = subprocess.Popen([*cmd, "-l", f"127.0.0.1:{port}"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(2)


def messages(count: int) -> list[EmailMessage]:
    event = Event(
        id=1,
        uid="5b0c1f7e-0000-4000-8000-000000000001",
        process_id=1,
        kind="review_forum",
        title="International Migration Review Forum",
        description="Plenary and round tables.",
        venue="UN Headquarters, New York",
        online_url="https://webtv.example.org/imrf",
        time_zone="America/New_York",
        starts_at=datetime(2030, 5, 14, 14, 0, tzinfo=UTC),
        ends_at=datetime(2030, 5, 17, 22, 0, tzinfo=UTC),
        status="published",
        rrule=None,
        exdates=[],
        sequence=0,
        created_at=NOW,
        updated_at=NOW,
    )
    out = []
    for i in range(count):
        note = Notification(
            id=i + 1,
            kind="registration_confirmed",
            recipient_email=f"person{i}@example.org",
            recipient_name=f"Person {i}",
            language=("en", "fr", "es", "ar")[i % 4],
            time_zone="Europe/Paris",
            context={"event_title": event.title},
            message_id="",
            created_at=NOW,
        )
        links = {"manage_url": f"https://forum.example.org/registrations/{i}.token"}
        out.append(render(note, event=event, links=links, mail_from="noreply@x.org", now=NOW))
    return out


async def send_all(port: int, pool: int, batch: list[EmailMessage]) -> float:
    settings = Settings().replace(smtp_host="127.0.0.1", smtp_port=port, smtp_pool_size=pool)
    sender = SmtpSender(settings)
    try:
        await sender.send(batch[0])  # connect outside the timing
        started = time.perf_counter()
        await asyncio.gather(*(sender.send(m) for m in batch))
        return len(batch) / (time.perf_counter() - started)
    finally:
        await sender.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--pool", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    batch = messages(args.messages)
    size = sum(len(m.as_bytes()) for m in batch[:20]) // 20
    port = free_port()
    server = start_server(port)
    try:
        await send_all(port, args.pool, batch[:100])  # warm-up
        best: dict[int, float] = {}
        for pool in (1, args.pool):
            best[pool] = max([await send_all(port, pool, batch) for _ in range(args.rounds)])
    finally:
        server.terminate()
        server.wait(10)
    print(f"{args.messages} messages of ~{size} bytes, best of {args.rounds} rounds")
    print(f"pool 1:  {best[1]:8.0f} messages/s (baseline)")
    print(f"pool {args.pool}:  {best[args.pool]:8.0f} messages/s")
    print(f"ratio pool {args.pool}/pool 1: {best[args.pool] / best[1]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
