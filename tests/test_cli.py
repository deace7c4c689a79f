"""The `scheduler` command end to end: real processes, a real SQLite file, real HTTP."""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

SCHEDULER = [sys.executable, "-m", "scheduler"]


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
    env["SCHEDULER_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    env["SCHEDULER_DATA_DIR"] = str(tmp_path)
    env.update(extra)
    return env


def run(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SCHEDULER, *args],
        env=env_for(tmp_path, **extra),
        capture_output=True,
        text=True,
        timeout=120,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_migrate_demo_organizer_and_serve(tmp_path: Path) -> None:
    assert run(tmp_path, "migrate").returncode == 0
    first = run(tmp_path, "demo")
    assert first.returncode == 0, first.stderr
    assert "demo cycle loaded" in first.stdout
    again = run(tmp_path, "demo")
    assert again.returncode == 0 and "already loaded" in again.stdout

    created = run(tmp_path, "organizer", "create", "--name", "Secretariat", "--process", "gcm")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("fs_") and " " not in token
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        stored = conn.execute("SELECT token_hash FROM api_tokens").fetchall()
        roles = conn.execute("SELECT role FROM process_organizers").fetchall()
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    assert stored == [(hashlib.sha256(token.encode()).hexdigest(),)]
    assert token not in str(stored)
    assert roles == [("organizer",)]
    assert events > 10

    unknown = run(tmp_path, "organizer", "create", "--name", "X", "--process", "nope")
    assert unknown.returncode == 2 and "nope" in unknown.stderr

    port = free_port()
    server = subprocess.Popen(
        [*SCHEDULER, "serve"],
        env=env_for(tmp_path, SCHEDULER_PORT=str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"{base}/health", timeout=2)
                break
            except httpx.TransportError:
                assert server.poll() is None, "server exited"
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.2)
        assert health.status_code == 200
        assert health.json() == {
            "status": "ok",
            "database": "up",
            "scheduler": "up",
            "version": "0.1.0",
        }
        events = httpx.get(f"{base}/api/events", params={"kind": "stakeholder_hearing"}).json()
        assert [e["start_local"] for e in events["items"]] == ["2026-05-04T10:00:00-04:00"]
        schema = httpx.get(f"{base}/schema/openapi.json").json()
        assert "/api/events/{event_id}/move" in schema["paths"]
        r = httpx.post(
            f"{base}/api/processes",
            json={"slug": "regional", "name": "Regional review", "time_zone": "Asia/Bangkok"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 201
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("SCHEDULER_PORT", "eighty", "SCHEDULER_PORT"),
        ("SCHEDULER_PORT", "70000", "port"),
        ("SCHEDULER_COLOUR", "blue", "SCHEDULER_COLOUR"),
        ("SCHEDULER_DATABASE_URL", "mysql://x", "database_url"),
    ],
)
def test_bad_settings_stop_the_start_naming_the_key(
    tmp_path: Path, variable: str, value: str, named: str
) -> None:
    result = run(tmp_path, "migrate", **{variable: value})
    assert result.returncode == 2
    assert named in result.stderr
    assert "Traceback" not in result.stderr


def test_organizer_create_with_an_email_for_reminders(tmp_path: Path) -> None:
    assert run(tmp_path, "migrate").returncode == 0
    assert run(tmp_path, "demo").returncode == 0
    bad = run(tmp_path, "organizer", "create", "--name", "X", "--email", "not an address")
    assert bad.returncode == 2 and "--email" in bad.stderr
    created = run(
        tmp_path, "organizer", "create", "--name", "Focal point", "--process", "gcm",
        "--email", "Focal@Example.org",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        rows = conn.execute("SELECT name, email FROM organizers").fetchall()
    assert rows == [("Focal point", "focal@example.org")]


def test_organizer_create_with_a_role(tmp_path: Path) -> None:
    assert run(tmp_path, "migrate").returncode == 0
    assert run(tmp_path, "demo").returncode == 0
    owner = run(
        tmp_path, "organizer", "create", "--name", "Secretariat", "--process", "gcm",
        "--role", "owner",
    )  # fmt: skip
    assert owner.returncode == 0, owner.stderr
    assert "owner of gcm" in owner.stdout
    assert owner.stdout.strip().splitlines()[-1].startswith("fs_")
    reader = run(
        tmp_path, "organizer", "create", "--name", "Observer", "--process", "gcm",
        "--role", "viewer",
    )  # fmt: skip
    assert reader.returncode == 0, reader.stderr
    bad = run(tmp_path, "organizer", "create", "--name", "X", "--process", "gcm", "--role", "boss")
    assert bad.returncode == 2 and "--role" in bad.stderr
    alone = run(tmp_path, "organizer", "create", "--name", "X", "--role", "viewer")
    assert alone.returncode == 2 and "--role needs at least one --process" in alone.stderr
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        roles = conn.execute(
            "SELECT o.name, m.role FROM process_organizers m "
            "JOIN organizers o ON o.id = m.organizer_id ORDER BY o.id"
        ).fetchall()
        tokens = conn.execute("SELECT count(*) FROM api_tokens").fetchone()[0]
    assert roles == [("Secretariat", "owner"), ("Observer", "viewer")]
    assert tokens == 2
