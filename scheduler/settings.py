"""One frozen settings object, built once from TOML files and ``SCHEDULER_*`` variables.

Order (later wins): ``config/default.toml``, the file named by ``SCHEDULER_CONFIG``, then
environment variables. TOML tables flatten into ``table_key`` names, so ``[database] url``
is the field ``database_url`` and the variable ``SCHEDULER_DATABASE_URL``. Unknown keys and
bad values stop the start with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_type_hints

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "config" / "default.toml"
ENV_PREFIX = "SCHEDULER_"

_DB_SCHEMES = ("sqlite+aiosqlite://", "postgresql+asyncpg://")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS = ("text", "json")


class SettingsError(ValueError):
    """A settings key is unknown or its value is unusable."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"setting {key!r}: {reason}")
        self.key = key
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    base_url: str = ""
    log_level: str = "info"
    # text: plain lines; json: one JSON object per line (scheduler/logs.py).
    log_format: str = "text"
    # GET /metrics in the Prometheus text format (scheduler/metrics.py).
    metrics_enabled: bool = True
    max_body_bytes: int = 1_048_576
    database_url: str = "sqlite+aiosqlite:///var/scheduler.db"
    database_busy_timeout_ms: int = 10_000
    database_pool_size: int = 8
    templates_dir: Path = PROJECT_ROOT / "config" / "templates"
    data_dir: Path = PROJECT_ROOT / "var"
    scheduler_enabled: bool = True
    # Signs manage links; empty: a random key kept in data_dir/secret_key (one node only).
    secret_key: str = ""
    registration_hold_minutes: int = 2880
    manage_link_days_after_event: int = 30
    # Public forms that mail someone (register, resend the manage link, subscribe): at most
    # per_ip requests per window from one address and per_email for one email; 0: no limit.
    # Kept in memory: each node of a cluster counts on its own.
    rate_limits_window_seconds: int = 600
    rate_limits_per_ip: int = 100
    rate_limits_per_email: int = 10
    # Personal data of events that ended more than this many months ago is anonymised by a
    # daily job (scheduler/retention.py); 0 keeps it.
    retention_months: int = 0
    mail_enabled: bool = True
    mail_transport: str = "maildir"
    mail_from: str = "Forum Scheduler <noreply@forum-scheduler.localhost>"
    mail_maildir: Path = PROJECT_ROOT / "var" / "mail"
    mail_batch_size: int = 100
    mail_max_attempts: int = 8
    mail_retry_seconds: int = 30
    mail_lease_seconds: int = 120
    mail_sweep_seconds: int = 30
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_tls: bool = False
    smtp_starttls: bool = False
    smtp_pool_size: int = 4
    smtp_timeout_seconds: int = 30
    # Pledge feeds. Hosts feeds may be fetched from, comma-separated ("*.example.org" for its
    # subdomains); empty: no feed can be registered. Nothing else is ever requested.
    feeds_allowed_hosts: str = ""
    # Follow a redirect to another allow-listed host (same host only when false).
    feeds_redirect_other_hosts: bool = False
    feeds_connect_timeout_seconds: int = 10
    feeds_read_timeout_seconds: int = 30
    # A whole run (every page, retries and waits) stops after this long.
    feeds_run_timeout_seconds: int = 900
    feeds_max_bytes: int = 268_435_456
    feeds_max_record_bytes: int = 1_048_576
    feeds_max_pages: int = 10_000
    feeds_max_redirects: int = 5
    feeds_max_retries: int = 3
    feeds_retry_base_ms: int = 1000
    feeds_max_retry_after_seconds: int = 600
    feeds_lease_seconds: int = 300
    feeds_min_interval_seconds: int = 300
    feeds_reconcile_seconds: int = 60
    feeds_batch_size: int = 1000
    feeds_keep_runs: int = 200
    feeds_quarantine_limit: int = 1000
    # Webhooks (scheduler/webhook_targets.py, webhook_delivery.py). false keeps deliveries
    # queued. Hosts in allowed_hosts (comma-separated, "*.example.org" for its subdomains,
    # IP addresses as written) may be plain http and may resolve to loopback or private
    # addresses; every other URL must be https on a public address.
    webhooks_enabled: bool = True
    webhooks_allowed_hosts: str = ""
    webhooks_only_allowed_hosts: bool = False
    webhooks_connect_timeout_seconds: int = 5
    # A whole request (connect, send, the answer's status and its first bytes) ends after this.
    webhooks_timeout_seconds: int = 10
    webhooks_max_attempts: int = 10
    webhooks_retry_seconds: int = 30
    # Longest wait between two attempts, backoff and Retry-After alike.
    webhooks_max_retry_seconds: int = 3600
    webhooks_batch_size: int = 50
    webhooks_concurrency: int = 8
    webhooks_lease_seconds: int = 120
    # A webhook whose deliveries have failed without a single success for this long is
    # disabled (0: never).
    webhooks_disable_after_hours: int = 72
    # After a rotation the previous secret keeps signing (a second signature) this long.
    webhooks_secret_grace_hours: int = 24
    # Finished deliveries (and their attempts) older than this are deleted daily (0: kept).
    webhooks_keep_days: int = 30

    @property
    def public_base_url(self) -> str:
        return self.base_url.rstrip("/") or f"http://{self.host}:{self.port}"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed and validated again (handy in tests)."""
        return _validated(dataclasses.replace(self, **changes))


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_TYPES: dict[str, Any] = get_type_hints(Settings)


def load_settings(
    environ: Mapping[str, str] | None = None, default_file: Path = DEFAULT_CONFIG
) -> Settings:
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if default_file.exists():
        values.update(_read_toml(default_file))
    extra = env.get(ENV_PREFIX + "CONFIG")
    if extra:
        path = Path(extra)
        if not path.is_file():
            raise SettingsError("SCHEDULER_CONFIG", f"no such file: {path}")
        values.update(_read_toml(path))
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in _FIELDS:
            raise SettingsError(name, "unknown setting")
        values[key] = _coerce(name, _TYPES[key], raw)
    typed = {key: _check_type(key, value) for key, value in values.items()}
    return _validated(Settings(**typed))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(str(path), f"not valid TOML: {exc}") from exc
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            for sub, sub_value in value.items():
                flat[f"{key}_{sub}"] = sub_value
        else:
            flat[key] = value
    for key in flat:
        if key not in _FIELDS:
            raise SettingsError(key, f"unknown setting in {path}")
    return flat


def _coerce(name: str, kind: Any, raw: str) -> Any:
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise SettingsError(name, f"expected true or false, got {raw!r}")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(name, f"expected a whole number, got {raw!r}") from None
    if kind is Path:
        return Path(raw)
    return raw


def _check_type(key: str, value: Any) -> Any:
    kind = _TYPES[key]
    if kind is Path and isinstance(value, str | Path):
        path = Path(value)
        return path if path.is_absolute() else PROJECT_ROOT / path
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise SettingsError(key, f"expected a whole number, got {value!r}")
    if kind is bool and not isinstance(value, bool):
        raise SettingsError(key, f"expected true or false, got {value!r}")
    if kind is str and not isinstance(value, str):
        raise SettingsError(key, f"expected text, got {value!r}")
    return value


def _validated(settings: Settings) -> Settings:
    if not 1 <= settings.port <= 65535:
        raise SettingsError("port", f"must be between 1 and 65535, got {settings.port}")
    if not settings.database_url.startswith(_DB_SCHEMES):
        raise SettingsError("database_url", f"must start with one of {', '.join(_DB_SCHEMES)}")
    if settings.log_level not in _LOG_LEVELS:
        raise SettingsError("log_level", f"must be one of {', '.join(_LOG_LEVELS)}")
    if settings.log_format not in _LOG_FORMATS:
        raise SettingsError("log_format", f"must be one of {', '.join(_LOG_FORMATS)}")
    if settings.max_body_bytes < 1024:
        raise SettingsError("max_body_bytes", "must be at least 1024")
    if settings.database_pool_size < 1:
        raise SettingsError("database_pool_size", "must be at least 1")
    if settings.mail_transport not in ("maildir", "smtp"):
        raise SettingsError("mail_transport", "must be maildir or smtp")
    if settings.smtp_tls and settings.smtp_starttls:
        raise SettingsError("smtp_starttls", "give smtp_tls or smtp_starttls, not both")
    if "@" not in settings.mail_from or "\n" in settings.mail_from or "\r" in settings.mail_from:
        raise SettingsError("mail_from", "must be an address such as Name <noreply@example.org>")
    for key in (
        "registration_hold_minutes",
        "mail_batch_size",
        "mail_max_attempts",
        "mail_retry_seconds",
        "mail_lease_seconds",
        "mail_sweep_seconds",
        "smtp_pool_size",
        "smtp_timeout_seconds",
    ):
        if getattr(settings, key) < 1:
            raise SettingsError(key, "must be at least 1")
    if not 1 <= settings.smtp_port <= 65535:
        raise SettingsError("smtp_port", "must be between 1 and 65535")
    if settings.rate_limits_window_seconds < 1:
        raise SettingsError("rate_limits_window_seconds", "must be at least 1")
    for key in ("rate_limits_per_ip", "rate_limits_per_email"):
        if getattr(settings, key) < 0:
            raise SettingsError(key, "must not be negative (0 turns the limit off)")
    if not 0 <= settings.retention_months <= 1200:
        raise SettingsError("retention_months", "must be between 0 (keep) and 1200")
    if settings.database_busy_timeout_ms < 0:
        raise SettingsError("database_busy_timeout_ms", "must not be negative")
    _validate_feeds(settings)
    _validate_webhooks(settings)
    return settings


def _validate_feeds(settings: Settings) -> None:
    for entry in settings.feeds_allowed_hosts.split(","):
        entry = entry.strip()
        if entry and (entry == "*" or any(c in entry for c in "/ @?#") or "://" in entry):
            raise SettingsError(
                "feeds_allowed_hosts", f"list host names such as pledges.example.org, got {entry!r}"
            )
    for key in (
        "feeds_connect_timeout_seconds",
        "feeds_read_timeout_seconds",
        "feeds_run_timeout_seconds",
        "feeds_max_record_bytes",
        "feeds_max_pages",
        "feeds_lease_seconds",
        "feeds_min_interval_seconds",
        "feeds_reconcile_seconds",
        "feeds_batch_size",
        "feeds_keep_runs",
    ):
        if getattr(settings, key) < 1:
            raise SettingsError(key, "must be at least 1")
    for key in (
        "feeds_max_redirects",
        "feeds_max_retries",
        "feeds_retry_base_ms",
        "feeds_max_retry_after_seconds",
        "feeds_quarantine_limit",
    ):
        if getattr(settings, key) < 0:
            raise SettingsError(key, "must not be negative")
    if settings.feeds_max_bytes < 1024:
        raise SettingsError("feeds_max_bytes", "must be at least 1024")


def _validate_webhooks(settings: Settings) -> None:
    for entry in settings.webhooks_allowed_hosts.split(","):
        entry = entry.strip()
        if entry and (entry == "*" or any(c in entry for c in "/ @?#") or "://" in entry):
            raise SettingsError(
                "webhooks_allowed_hosts",
                f"list host names or addresses such as hooks.example.org, got {entry!r}",
            )
    for key in (
        "webhooks_connect_timeout_seconds",
        "webhooks_timeout_seconds",
        "webhooks_max_attempts",
        "webhooks_retry_seconds",
        "webhooks_max_retry_seconds",
        "webhooks_batch_size",
        "webhooks_concurrency",
        "webhooks_lease_seconds",
    ):
        if getattr(settings, key) < 1:
            raise SettingsError(key, "must be at least 1")
    for key in (
        "webhooks_disable_after_hours",
        "webhooks_secret_grace_hours",
        "webhooks_keep_days",
    ):
        if getattr(settings, key) < 0:
            raise SettingsError(key, "must not be negative")
    if settings.webhooks_lease_seconds < 2 * settings.webhooks_timeout_seconds + 10:
        raise SettingsError(
            "webhooks_lease_seconds",
            "must be at least twice webhooks_timeout_seconds, plus 10 (an attempt, with its "
            "name lookup, must end well within the lease)",
        )
