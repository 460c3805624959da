from __future__ import annotations

from pathlib import Path

import pytest

from fastproxy.core.settings import SettingsError, load_settings


def test_defaults_need_no_configuration() -> None:
    s = load_settings(environ={})
    assert s.port == 8000
    assert s.database_url == "sqlite:///./fastproxy.db"


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "fastproxy.toml"
    path.write_text('port = 9000\nupstream_url = "http://10.0.0.1:11434/v1"\nread_timeout = 30\n')
    s = load_settings(str(path), environ={"FASTPROXY_PORT": "9100", "FASTPROXY_ACCESS_LOG": "false"})
    assert (s.port, s.upstream_url, s.read_timeout, s.access_log) == (9100, "http://10.0.0.1:11434/v1", 30.0, False)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"FASTPROXY_PORT": "eighty"}, "port (FASTPROXY_PORT)"),
        ({"FASTPROXY_PORT": "70000"}, "port (FASTPROXY_PORT)"),
        ({"FASTPROXY_READ_TIMEOUT": "0"}, "read_timeout"),
        ({"FASTPROXY_UPSTREAM_URL": "localhost:11434"}, "upstream_url"),
        ({"FASTPROXY_DATABASE_URL": "mysql://x"}, "database_url"),
        ({"FASTPROXY_LOG_LEVEL": "loud"}, "log_level"),
    ],
)
def test_bad_setting_is_named_in_one_line(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(environ=env)
    assert named in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("prot = 1\n")
    with pytest.raises(SettingsError, match="prot"):
        load_settings(str(path), environ={})


def test_secrets_are_masked() -> None:
    s = load_settings(
        environ={
            "FASTPROXY_UPSTREAM_API_KEY": "sk-live-abcdefghijklmnop1234",
            "FASTPROXY_DATABASE_URL": "postgresql://app:hunter2secret@db:5432/fp",
        }
    )
    masked = s.masked()
    assert masked["upstream_api_key"] == "...1234"
    assert masked["database_url"] == "postgresql://app:****@db:5432/fp"
    assert "hunter2secret" not in str(masked)
