"""Three service processes on one PostgreSQL database, as a cluster behind a proxy would be.

500 people register at once, spread round-robin over the nodes, for 100 seats: exactly 100
seats and a gapless waiting list of 400. Then a 5,000-recipient reminder wave falls due and
one node is SIGKILLed in the middle of it: every recipient still gets their reminder, and a
message arrives twice only if it was in flight at the kill (same Message-ID). Sent once,
missed and duplicated are printed (about 40 s in all here); tests/bench/bench_cluster.py
measures the throughput.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx

from tests.live_server import LiveServer, cli, fresh_database, server_env
from tests.mail_server import MailServer
from tests.reminder_wave import seed_wave
from tests.test_metrics import parse

NODES = 3
SEATS = 100
PEOPLE = 500
WAVE = 5000
KILL_AFTER = 0.25  # share of the wave delivered when a node is killed
LEASE_SECONDS = 4  # mail_lease_seconds: how soon a dead node's messages are taken over


def cluster_env(tmp_path: Path, url: str, smtp: MailServer) -> dict[str, str]:
    return server_env(
        tmp_path,
        url,
        SCHEDULER_MAIL_TRANSPORT="smtp",
        SCHEDULER_SMTP_HOST="127.0.0.1",
        SCHEDULER_SMTP_PORT=str(smtp.port),
        SCHEDULER_MAIL_LEASE_SECONDS=str(LEASE_SECONDS),
        SCHEDULER_MAIL_SWEEP_SECONDS="1",
        SCHEDULER_DATABASE_POOL_SIZE="4",
        # The whole burst comes from one address: the per-address form limit is off.
        SCHEDULER_RATE_LIMITS_PER_IP="0",
    )


def person(i: int) -> dict[str, str]:
    return {
        "name": f"Participant {i}",
        "email": f"multi{i}@example.org",
        "constituency": "civil_society",
        "country": "KEN",
        "language": "en",
        "time_zone": "Africa/Nairobi",
    }


async def open_event(base: str, token: str) -> int:
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=auth, timeout=30) as client:
        r = await client.post(
            "/api/processes", json={"slug": "multi", "name": "Multi", "time_zone": "UTC"}
        )
        assert r.status_code == 201, r.text
        start = datetime.now(UTC) + timedelta(days=30)
        r = await client.post(
            "/api/events",
            json={
                "process_id": r.json()["id"],
                "kind": "stakeholder_hearing",
                "title": "Hearing on three nodes",
                "time_zone": "America/New_York",
                "start": start.isoformat(),
                "end": (start + timedelta(hours=8)).isoformat(),
                "status": "published",
                "capacity": SEATS,
                "confirmation_required": False,
            },
        )
        assert r.status_code == 201, r.text
        return int(r.json()["id"])


async def register_everyone(bases: list[str], event_id: int) -> list[dict[str, object]]:
    limits = httpx.Limits(max_connections=PEOPLE, max_keepalive_connections=PEOPLE)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        answers = await asyncio.gather(
            *(
                client.post(
                    f"{bases[i % len(bases)]}/api/events/{event_id}/registrations",
                    json=person(i),
                )
                for i in range(PEOPLE)
            )
        )
    assert all(r.status_code == 201 for r in answers), {r.status_code for r in answers}
    return [r.json() for r in answers]


def wait_for(condition: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def mail_sent(base: str) -> float:
    samples = parse(httpx.get(f"{base}/metrics", timeout=10).text)
    return sum(v for k, v in samples.items() if k.startswith("scheduler_mail_sent_total"))


async def statuses(url: str, emails: set[str]) -> Counter[str]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch(
            "SELECT recipient_email, status FROM notifications WHERE kind = 'event_reminder'"
        )
    finally:
        await conn.close()
    return Counter(r["status"] for r in rows if r["recipient_email"] in emails)


def test_three_nodes_on_one_postgres(tmp_path: Path, mail_server: MailServer) -> None:
    with fresh_database("postgres", tmp_path) as url:
        env = cluster_env(tmp_path, url, mail_server)
        cli(env, "migrate")
        token = cli(env, "organizer", "create", "--name", "Multi").strip().splitlines()[-1]
        nodes = [LiveServer(env) for _ in range(NODES)]
        try:
            for node in nodes:
                node.start()
            bases = [node.base_url for node in nodes]
            registrations_are_exact(bases, token)
            a_killed_node_loses_no_reminder(url, nodes, mail_server)
        finally:
            for node in nodes:
                node.stop()


def registrations_are_exact(bases: list[str], token: str) -> None:
    event_id = asyncio.run(open_event(bases[0], token))
    receipts = asyncio.run(register_everyone(bases, event_id))
    statuses = Counter(str(r["status"]) for r in receipts)
    assert statuses == {"confirmed": SEATS, "waiting": PEOPLE - SEATS}
    positions = sorted(
        int(str(r["waitlist_position"])) for r in receipts if r["status"] == "waiting"
    )
    assert positions == list(range(1, PEOPLE - SEATS + 1))
    auth = {"Authorization": f"Bearer {token}"}
    for base in bases:  # every node sees the same list
        waiting = httpx.get(f"{base}/api/events/{event_id}/waiting-list", headers=auth).json()
        assert [w["position"] for w in waiting] == positions
    print(f"\n[multinode] {PEOPLE} registrations over {len(bases)} nodes: {dict(statuses)}")


def a_killed_node_loses_no_reminder(url: str, nodes: list[LiveServer], smtp: MailServer) -> None:
    # The registrations' own mails first, so that what follows is the wave alone.
    wait_for(lambda: len(smtp.messages) >= PEOPLE, 60)
    time.sleep(0.5)
    already = len(smtp.messages)
    victim = nodes[1]
    victim_before = mail_sent(victim.base_url)
    wave = asyncio.run(seed_wave(url, WAVE))
    emails = set(wave.emails)

    def delivered() -> list[str]:
        return [m.rcpt_tos[0] for m in smtp.messages[already:]]

    wait_for(lambda: len(delivered()) >= WAVE * KILL_AFTER, 60)
    victim_sent = mail_sent(victim.base_url) - victim_before
    victim.kill()
    killed_at = time.monotonic()
    at_kill = len(delivered())
    assert at_kill < WAVE, "the wave finished before the kill"

    wait_for(lambda: emails <= set(delivered()), 60)
    took_over = time.monotonic() - killed_at
    time.sleep(1.0)  # anything arriving now would be a duplicate
    messages = smtp.messages[already:]
    ids: dict[str, set[str]] = {}
    for m in messages:
        ids.setdefault(m.rcpt_tos[0], set()).add(str(m.parsed()["Message-ID"]))
    received = Counter(m.rcpt_tos[0] for m in messages)
    missed = len(emails - set(received))
    duplicated = sum(n - 1 for n in received.values() if n > 1)
    once = sum(1 for n in received.values() if n == 1)
    print(
        f"[multinode] wave of {WAVE} over {len(nodes)} nodes, node 2 SIGKILLed after "
        f"{at_kill} deliveries (it had sent {victim_sent:.0f} of them); the rest arrived "
        f"{took_over:.1f} s after the kill (lease {LEASE_SECONDS} s)\n"
        f"[multinode] sent once: {once}, missed: {missed}, duplicated: {duplicated} "
        f"(in flight at the kill, same Message-ID)"
    )
    assert victim_sent > 0, "the killed node was sending the wave"
    assert missed == 0
    assert set(received) == emails
    assert all(len(v) == 1 for v in ids.values()), "a duplicate with another Message-ID"
    assert asyncio.run(statuses(url, emails)) == {"sent": WAVE}
    survivors = [n for n in nodes if n is not victim]
    lateness = 0.0
    for node in survivors:
        samples = parse(httpx.get(f"{node.base_url}/metrics", timeout=10).text)
        lateness += samples.get(
            'scheduler_reminder_lateness_seconds_count{kind="event_reminder"}', 0
        )
    assert lateness > 0, "survivors measured reminder lateness"
