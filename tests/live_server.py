"""A real `scheduler serve` process on a free loopback port, for tests that need real HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import httpx

SCHEDULER = [sys.executable, "-m", "scheduler"]
PG_ADMIN = os.environ.get("SCHEDULER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
SECRET = "test-secret-key-for-manage-links"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(data_dir: Path, database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
    env.update(
        SCHEDULER_DATABASE_URL=database_url,
        SCHEDULER_DATA_DIR=str(data_dir),
        SCHEDULER_MAIL_MAILDIR=str(data_dir / "mail"),
        SCHEDULER_SECRET_KEY=SECRET,
        SCHEDULER_LOG_LEVEL="warning",
        # Every test client is 127.0.0.1, standing for hundreds of people: no per-address
        # limit here (tests/test_rate_limits.py checks the limits; pass extra to set one).
        SCHEDULER_RATE_LIMITS_PER_IP="0",
        # Nothing beyond 127.0.0.1: a webhook URL naming any other host (the fuzzer makes
        # them up) is refused before its name is looked up.
        SCHEDULER_WEBHOOKS_ALLOWED_HOSTS="127.0.0.1",
        SCHEDULER_WEBHOOKS_ONLY_ALLOWED_HOSTS="true",
    )
    env.update(extra)
    return env


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) used so far by every thread of a process; None off Linux.

    The benches print it per request: on a shared machine it moves far less than req/s or
    latency when other work takes the cores.
    """
    try:
        total = 0
        for task in Path(f"/proc/{pid}/task").iterdir():
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, IndexError, ValueError):
        return None
    return total / os.sysconf("SC_CLK_TCK")


def cpu_note(pid: int, before: float | None, requests: float) -> str:
    """``server CPU <us>/req``, plus the load average, for a bench's run line."""
    after = cpu_seconds(pid)
    load = f"load {os.getloadavg()[0]:.1f}"
    if before is None or after is None or requests <= 0:
        return load
    return f"server CPU {(after - before) / requests * 1e6:5.0f} us/req  {load}"


def cli(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [*SCHEDULER, *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


class LiveServer:
    def __init__(self, env: dict[str, str], command: list[str] | None = None) -> None:
        self.command = command or [*SCHEDULER, "serve"]
        self.env = dict(env)
        self.port = free_port()
        self.env["SCHEDULER_PORT"] = str(self.port)
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(Path(self.env["SCHEDULER_DATA_DIR"]) / f"server-{self.port}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.process.poll() is None, "the server exited at start"
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def running(env: dict[str, str]) -> Iterator[LiveServer]:
    server = LiveServer(env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def fresh_database(kind: str, data_dir: Path) -> Iterator[str]:
    """A new, empty database URL: a SQLite file, or a PostgreSQL database dropped after."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{data_dir / 'live.db'}"
        return
    import asyncio

    name = f"fs_live_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        yield f"{base}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
