"""Clock jobs that every node fires run on one node at a time (advisory locks on PostgreSQL)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from scheduler.database import open_database
from scheduler.job_locks import lock_key, run_alone
from tests.conftest import base_settings
from tests.live_server import SCHEDULER, cli, fresh_database, server_env


def test_keys_are_stable_and_distinct() -> None:
    assert lock_key("expire-holds") == lock_key("expire-holds")
    assert lock_key("expire-holds") != lock_key("retention")
    assert -(2**63) <= lock_key("retention") < 2**63


async def test_a_second_node_skips_while_the_first_runs(database_url: str, tmp_path: Path) -> None:
    # Two Database objects: two pools, as on two nodes.
    first = open_database(base_settings(database_url, tmp_path))
    second = open_database(base_settings(database_url, tmp_path))
    try:
        if first.is_sqlite:  # one writer at a time already; the lock is not needed
            async with first.writer.begin() as session:
                assert await run_alone(session, "expire-holds")
            return
        async with first.writer.begin() as one:
            assert await run_alone(one, "expire-holds")
            async with second.writer.begin() as other:
                assert not await run_alone(other, "expire-holds")
                assert await run_alone(other, "retention")  # another job is not held up
        # The lock ended with the first transaction.
        async with second.writer.begin() as other:
            assert await run_alone(other, "expire-holds")
    finally:
        await first.dispose()
        await second.dispose()


def test_nodes_starting_together_migrate_once(tmp_path: Path) -> None:
    """Each node runs `scheduler migrate` at start; on an empty database they race."""
    with fresh_database("postgres", tmp_path) as url:
        env = server_env(tmp_path, url)
        procs = [
            subprocess.Popen([*SCHEDULER, "migrate"], env=env, stderr=subprocess.PIPE, text=True)
            for _ in range(3)
        ]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], errors
        assert "migrations applied" in cli(env, "migrate")
