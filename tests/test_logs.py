"""Structured logs: with ``log_format = "json"`` every line a server writes is one JSON object."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import httpx
import pytest

from scheduler.logs import JsonFormatter
from scheduler.settings import SettingsError, load_settings
from tests.live_server import cli, fresh_database, running, server_env


def record(message: str, **extra: object) -> logging.LogRecord:
    log = logging.getLogger("scheduler.test")
    return log.makeRecord(log.name, logging.WARNING, __file__, 1, message, (), None, extra=extra)


def test_a_record_is_one_json_object_with_its_extras() -> None:
    line = JsonFormatter().format(record("outbox %s", notification_id=7, node="a"))
    entry = json.loads(line)
    assert entry["level"] == "warning"
    assert entry["logger"] == "scheduler.test"
    assert entry["message"] == "outbox %s"
    assert entry["notification_id"] == 7 and entry["node"] == "a"
    assert entry["time"].endswith("+00:00")
    assert "\n" not in line


def test_a_traceback_stays_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record("failed")
        rec.exc_info = sys.exc_info()
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_log_format_is_checked() -> None:
    assert load_settings({}).log_format == "text"
    assert load_settings({"SCHEDULER_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(SettingsError, match="log_format"):
        load_settings({"SCHEDULER_LOG_FORMAT": "yaml"})


def test_a_json_server_writes_only_json_lines(tmp_path: Path) -> None:
    with fresh_database("sqlite", tmp_path) as url:
        env = server_env(tmp_path, url, SCHEDULER_LOG_FORMAT="json", SCHEDULER_LOG_LEVEL="info")
        cli(env, "migrate")
        with running(env) as server:
            assert httpx.get(f"{server.base_url}/api/processes").status_code == 200
            port = server.port
    lines = (tmp_path / f"server-{port}.log").read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.strip()]
    assert entries, "the server logged nothing"
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    assert any(e["logger"].startswith("uvicorn") for e in entries)
    assert any("startup complete" in e["message"] for e in entries)
