import dataclasses
from pathlib import Path

import pytest

from scheduler.settings import DEFAULT_CONFIG, PROJECT_ROOT, Settings, SettingsError, load_settings


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def default_file(tmp_path: Path) -> Path:
    return write(
        tmp_path / "default.toml",
        'host = "127.0.0.1"\nport = 8000\n\n[database]\nurl = "sqlite+aiosqlite:///var/a.db"\n',
    )


def test_defaults_without_any_file(tmp_path: Path) -> None:
    settings = load_settings({}, default_file=tmp_path / "missing.toml")
    assert settings == Settings()
    assert settings.port == 8000
    assert settings.database_url == "sqlite+aiosqlite:///var/scheduler.db"
    assert settings.templates_dir == PROJECT_ROOT / "config" / "templates"
    assert settings.scheduler_enabled is True
    assert settings.is_sqlite
    assert settings.public_base_url == "http://127.0.0.1:8000"


def test_shipped_default_file_agrees_with_the_defaults() -> None:
    assert load_settings({}, default_file=DEFAULT_CONFIG) == Settings()


def test_default_file_is_read_and_tables_flatten(default_file: Path) -> None:
    settings = load_settings({}, default_file=default_file)
    assert settings.database_url == "sqlite+aiosqlite:///var/a.db"
    assert settings.port == 8000


def test_file_named_by_scheduler_config_overrides(default_file: Path, tmp_path: Path) -> None:
    extra = write(
        tmp_path / "site.toml",
        'port = 9000\nbase_url = "https://forum.example.org/"\ntemplates_dir = "elsewhere"\n'
        '[database]\nurl = "postgresql+asyncpg://forum@127.0.0.1:5432/forum"\npool_size = 4\n'
        "[scheduler]\nenabled = false\n",
    )
    settings = load_settings({"SCHEDULER_CONFIG": str(extra)}, default_file=default_file)
    assert settings.port == 9000
    assert settings.host == "127.0.0.1"  # still from the default file
    assert settings.database_url.startswith("postgresql+asyncpg://")
    assert not settings.is_sqlite
    assert settings.database_pool_size == 4
    assert settings.scheduler_enabled is False
    assert settings.templates_dir == PROJECT_ROOT / "elsewhere"  # relative to the project
    assert settings.public_base_url == "https://forum.example.org"


def test_environment_overrides_files(default_file: Path, tmp_path: Path) -> None:
    extra = write(tmp_path / "site.toml", "port = 9000\n")
    env = {
        "SCHEDULER_CONFIG": str(extra),
        "SCHEDULER_PORT": "9100",
        "SCHEDULER_SCHEDULER_ENABLED": "off",
        "SCHEDULER_DATA_DIR": str(tmp_path / "data"),
        "SCHEDULER_LOG_LEVEL": "debug",
        "PATH": "/usr/bin",  # other variables are none of our business
    }
    settings = load_settings(env, default_file=default_file)
    assert settings.port == 9100
    assert settings.scheduler_enabled is False
    assert settings.data_dir == tmp_path / "data"
    assert settings.log_level == "debug"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('colour = "blue"\n', "colour"),
        ('[database]\ncolour = "blue"\n', "database_colour"),
        ('[smtp]\nhostname = "mail"\n', "smtp_hostname"),
    ],
)
def test_unknown_key_in_a_file_names_the_key(
    default_file: Path, tmp_path: Path, text: str, key: str
) -> None:
    extra = write(tmp_path / "site.toml", text)
    with pytest.raises(SettingsError) as info:
        load_settings({"SCHEDULER_CONFIG": str(extra)}, default_file=default_file)
    assert info.value.key == key
    assert "unknown setting" in info.value.reason
    # The default file is checked the same way.
    with pytest.raises(SettingsError) as info:
        load_settings({}, default_file=extra)
    assert info.value.key == key


def test_unknown_environment_variable_names_the_variable(default_file: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"SCHEDULER_PROT": "9000"}, default_file=default_file)
    assert info.value.key == "SCHEDULER_PROT"
    assert "SCHEDULER_PROT" in str(info.value)


def test_missing_config_file_names_the_variable(default_file: Path, tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"SCHEDULER_CONFIG": str(tmp_path / "nope.toml")}, default_file=default_file)
    assert info.value.key == "SCHEDULER_CONFIG"


def test_invalid_toml_names_the_file(default_file: Path, tmp_path: Path) -> None:
    extra = write(tmp_path / "site.toml", "port = \n")
    with pytest.raises(SettingsError) as info:
        load_settings({"SCHEDULER_CONFIG": str(extra)}, default_file=default_file)
    assert info.value.key == str(extra)


@pytest.mark.parametrize(
    ("env", "key", "reason"),
    [
        ({"SCHEDULER_PORT": "abc"}, "SCHEDULER_PORT", "whole number"),
        ({"SCHEDULER_PORT": ""}, "SCHEDULER_PORT", "whole number"),
        ({"SCHEDULER_PORT": "70000"}, "port", "between 1 and 65535"),
        ({"SCHEDULER_PORT": "0"}, "port", "between 1 and 65535"),
        ({"SCHEDULER_DATABASE_URL": "mysql://forum@db/forum"}, "database_url", "must start"),
        ({"SCHEDULER_DATABASE_URL": "sqlite:///plain.db"}, "database_url", "must start"),
        ({"SCHEDULER_SCHEDULER_ENABLED": "maybe"}, "SCHEDULER_SCHEDULER_ENABLED", "true or"),
        ({"SCHEDULER_LOG_LEVEL": "verbose"}, "log_level", "must be one of"),
        ({"SCHEDULER_MAX_BODY_BYTES": "10"}, "max_body_bytes", "at least 1024"),
        ({"SCHEDULER_DATABASE_POOL_SIZE": "0"}, "database_pool_size", "at least 1"),
        ({"SCHEDULER_WEBHOOKS_ALLOWED_HOSTS": "*"}, "webhooks_allowed_hosts", "host names"),
        (
            {"SCHEDULER_WEBHOOKS_ALLOWED_HOSTS": "https://hooks.example.org"},
            "webhooks_allowed_hosts",
            "host names",
        ),
        ({"SCHEDULER_WEBHOOKS_MAX_ATTEMPTS": "0"}, "webhooks_max_attempts", "at least 1"),
        (
            {"SCHEDULER_WEBHOOKS_DISABLE_AFTER_HOURS": "-1"},
            "webhooks_disable_after_hours",
            "not be negative",
        ),
        (
            {"SCHEDULER_WEBHOOKS_TIMEOUT_SECONDS": "60"},
            "webhooks_lease_seconds",
            "twice webhooks_timeout_seconds",
        ),
    ],
)
def test_bad_environment_values_name_the_key(
    default_file: Path, env: dict[str, str], key: str, reason: str
) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(env, default_file=default_file)
    assert info.value.key == key
    assert reason in info.value.reason


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('port = "abc"\n', "port"),
        ("port = 70000\n", "port"),
        ("port = true\n", "port"),
        ("port = 8000.0\n", "port"),
        ('[database]\nurl = "mysql://forum@db/forum"\n', "database_url"),
        ('[scheduler]\nenabled = "yes"\n', "scheduler_enabled"),
        ("host = 127\n", "host"),
    ],
)
def test_bad_file_values_name_the_key(
    default_file: Path, tmp_path: Path, text: str, key: str
) -> None:
    extra = write(tmp_path / "site.toml", text)
    with pytest.raises(SettingsError) as info:
        load_settings({"SCHEDULER_CONFIG": str(extra)}, default_file=default_file)
    assert info.value.key == key


def test_settings_is_frozen(tmp_path: Path) -> None:
    settings = load_settings({}, default_file=tmp_path / "missing.toml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 9000  # type: ignore[misc]
    changed = settings.replace(port=9000)
    assert changed.port == 9000
    assert settings.port == 8000
    with pytest.raises(SettingsError) as info:
        settings.replace(port=70000)
    assert info.value.key == "port"
