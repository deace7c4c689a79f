"""Scaling out on one PostgreSQL: registrations/s with 1, 2 and 3 nodes, and a reminder wave.

Registrations: three `scheduler serve` processes on one fresh database (mail off, as in
bench_registrations.py); for 1, 2 and then 3 nodes, one ``wrk`` per node drives unique people
(``--connections`` in all, split evenly), ``--rounds`` times, keeping the best. "one event":
every node registers for the same new event, whose row lock serialises the batches of all
nodes (the hearing that opens its registration); "own events": each node its own event, so
nodes only share the machine and the database. Each event is checked afterwards: exactly its
capacity taken, a gapless waiting list. The ratios against 1 node in the same run are the
result.

Reminder wave: ``--wave`` (5,000) reminders fall due at once on a fresh database, delivered
over SMTP to a local aiosmtpd by 1 node, then by 2 nodes (messages/s from the first delivery
to the last), then by 2 nodes with one SIGKILLed a third of the way through (sent once,
missed, duplicated; the survivor takes the dead node's messages over when their lease ends).

This machine has 2 cores for everything: the nodes, PostgreSQL, wrk and the SMTP server.
One node already keeps about one core busy, so extra nodes here show what the database
locking allows, not what more machines would give. Nothing is asserted; goals are printed.

    .venv/bin/python tests/bench/bench_cluster.py [--duration 8] [--connections 48]
        [--rounds 2] [--wave 5000] [--lease 4]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.bench_registrations import LUA
from tests.live_server import LiveServer, cli, fresh_database, server_env
from tests.mail_server import MailServer, start_server
from tests.reminder_wave import seed_wave

CAPACITY = 1000
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
QUIET = {"SCHEDULER_RATE_LIMITS_PER_IP": "0", "SCHEDULER_DATABASE_POOL_SIZE": "4"}


@dataclass
class Load:
    rps: float
    p99: float
    errors: int


def start_wrk(
    base: str, path: str, label: str, connections: int, seconds: int, script: Path
) -> subprocess.Popen[str]:
    options = ["-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script)]
    return subprocess.Popen(
        ["wrk", *options, base, "--", path, label],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def parse_wrk(out: str) -> Load:
    rps = float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"^\s*99(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    return Load(
        rps,
        float(p99.group(1)) * _UNITS[p99.group(2)] if p99 else float("nan"),
        int(bad.group(1)) if bad else 0,
    )


def new_event(base: str, token: str, process_id: int, title: str) -> int:
    start = datetime.now(UTC) + timedelta(days=30)
    r = httpx.post(
        f"{base}/api/events",
        headers={"Authorization": f"Bearer {token}"},
        json={
            "process_id": process_id,
            "kind": "stakeholder_hearing",
            "title": title,
            "time_zone": "UTC",
            "start": start.isoformat(),
            "end": (start + timedelta(hours=8)).isoformat(),
            "status": "published",
            "capacity": CAPACITY,
            "confirmation_required": False,
        },
        timeout=30,
    )
    r.raise_for_status()
    return int(r.json()["id"])


def exact(base: str, token: str, event_id: int) -> bool:
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=auth, timeout=60) as client:
        stats = client.get(f"/api/events/{event_id}/registrations/stats").json()
        waiting = client.get(f"/api/events/{event_id}/waiting-list").json()
    gapless = [w["position"] for w in waiting] == list(range(1, len(waiting) + 1))
    return bool(stats["seats_taken"] == min(CAPACITY, stats["total"]) and gapless)


# (nodes, events): every node on one hot event, or each node on its own event.
SETUPS = (
    (1, "one event"),
    (2, "one event"),
    (3, "one event"),
    (2, "own events"),
    (3, "own events"),
)


def registrations(args: argparse.Namespace, tmp: Path) -> dict[tuple[int, str], Load]:
    script = tmp / "register.lua"
    script.write_text(LUA)
    best: dict[tuple[int, str], Load] = {}
    with fresh_database("postgres", tmp) as url:
        env = server_env(tmp, url, SCHEDULER_MAIL_ENABLED="false", **QUIET)
        cli(env, "migrate")
        token = cli(env, "organizer", "create", "--name", "Bench").strip().splitlines()[-1]
        nodes = [LiveServer(env) for _ in range(3)]
        try:
            for node in nodes:
                node.start()
            r = httpx.post(
                f"{nodes[0].base_url}/api/processes",
                headers={"Authorization": f"Bearer {token}"},
                json={"slug": "bench", "name": "Bench", "time_zone": "UTC"},
            )
            process_id = int(r.json()["id"])
            all_exact = True
            for round_ in range(args.rounds):
                for count, mode in SETUPS:
                    label = f"n{count}{mode[0]}r{round_}"
                    shared = new_event(nodes[0].base_url, token, process_id, label)
                    events = [
                        shared
                        if mode == "one event" or i == 0
                        else new_event(nodes[0].base_url, token, process_id, f"{label}e{i}")
                        for i in range(count)
                    ]
                    share = max(args.connections // count, 1)
                    procs = [
                        start_wrk(
                            node.base_url,
                            f"/api/events/{event_id}/registrations",
                            f"{label}w{i}",
                            share,
                            args.duration,
                            script,
                        )
                        for i, (node, event_id) in enumerate(zip(nodes, events, strict=False))
                    ]
                    loads = [parse_wrk(p.communicate(timeout=args.duration + 60)[0]) for p in procs]
                    load = Load(
                        sum(x.rps for x in loads),
                        max(x.p99 for x in loads),
                        sum(x.errors for x in loads),
                    )
                    ok = all(exact(nodes[0].base_url, token, e) for e in set(events))
                    all_exact = all_exact and ok
                    print(
                        f"  {count} node(s), {mode:10} round {round_ + 1}: {load.rps:6.0f} "
                        f"registrations/s  p99 {load.p99:6.1f} ms  non-2xx {load.errors}  "
                        f"{'exact' if ok else 'OVERBOOKED OR GAPS'}"
                    )
                    if (count, mode) not in best or load.rps > best[count, mode].rps:
                        best[count, mode] = load
            print(f"  every event exact (capacity {CAPACITY}, gapless waiting list): {all_exact}")
        finally:
            for node in nodes:
                node.stop()
    return best


@dataclass
class Wave:
    nodes: int
    seconds: float
    once: int
    missed: int
    duplicated: int
    killed_after: int | None


def wave(args: argparse.Namespace, tmp: Path, count: int, *, kill: bool) -> Wave:
    smtp: MailServer = start_server()
    folder = Path(tempfile.mkdtemp(dir=tmp))
    try:
        with fresh_database("postgres", folder) as url:
            env = server_env(
                folder,
                url,
                SCHEDULER_MAIL_TRANSPORT="smtp",
                SCHEDULER_SMTP_HOST="127.0.0.1",
                SCHEDULER_SMTP_PORT=str(smtp.port),
                SCHEDULER_MAIL_LEASE_SECONDS=str(args.lease),
                SCHEDULER_MAIL_SWEEP_SECONDS="1",
                **QUIET,
            )
            cli(env, "migrate")
            nodes = [LiveServer(env) for _ in range(count)]
            try:
                for node in nodes:
                    node.start()
                due = datetime.now(UTC) + timedelta(seconds=3)
                planned = asyncio.run(seed_wave(url, args.wave, first_due=due))
                emails = set(planned.emails)
                first: float | None = None
                last: float | None = None
                killed_after = None
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:
                    got = smtp.messages
                    now = time.monotonic()
                    if got and first is None:
                        first = now
                    if kill and killed_after is None and len(got) >= args.wave / 3:
                        nodes[-1].kill()
                        killed_after = len(got)
                    if emails <= {m.rcpt_tos[0] for m in got}:
                        last = now
                        break
                    time.sleep(0.02)
                time.sleep(1.0)  # anything later would be a duplicate
            finally:
                for node in nodes:
                    node.stop()
        received = Counter(m.rcpt_tos[0] for m in smtp.messages)
        assert first is not None and last is not None, "the wave did not finish"
        return Wave(
            count,
            last - first,
            sum(1 for n in received.values() if n == 1),
            len(emails - set(received)),
            sum(n - 1 for n in received.values() if n > 1),
            killed_after,
        )
    finally:
        smtp.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--wave", type=int, default=5000)
    parser.add_argument("--lease", type=int, default=4)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="fs-bench-cluster-"))
    try:
        print(f"registrations on PostgreSQL, {args.connections} connections in all")
        best = registrations(args, tmp)
        print(f"reminder wave of {args.wave:,} over SMTP")
        one = wave(args, tmp, 1, kill=False)
        two = wave(args, tmp, 2, kill=False)
        killed = wave(args, tmp, 2, kill=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = best[1, "one event"].rps
    print(
        f"\ncluster bench (best of {args.rounds} x {args.duration} s; 2 cores shared by nodes, "
        "PostgreSQL, wrk and the SMTP server)"
    )
    for (count, mode), load in best.items():
        print(
            f"  {count} node(s), {mode:10}: {load.rps:6.0f} registrations/s  "
            f"p99 {load.p99:6.1f} ms  ratio to 1 node {load.rps / base:.2f}"
        )
    for w in (one, two):
        print(
            f"  wave, {w.nodes} node(s): {args.wave / w.seconds:7.0f} messages/s "
            f"({w.seconds:.1f} s first to last)  once {w.once}  missed {w.missed}  "
            f"duplicated {w.duplicated}"
        )
    print(f"  wave ratio 2 nodes / 1 node = {one.seconds / two.seconds:.2f}")
    print(
        f"  wave, 2 nodes, one SIGKILLed after {killed.killed_after} deliveries: "
        f"{killed.seconds:.1f} s first to last (lease {args.lease} s)  once {killed.once}  "
        f"missed {killed.missed} (goal 0: {'MET' if killed.missed == 0 else 'MISSED'})  "
        f"duplicated {killed.duplicated} (in flight at the kill)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
