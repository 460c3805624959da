"""Providers and routes as configured: every mistake stops startup with one line naming the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fastproxy.core.providers import Provider
from fastproxy.core.settings import SettingsError, load_settings
from fastproxy.upstream.breaker import BreakerPolicy
from fastproxy.upstream.providers import LiveProvider

GOOD_PROVIDER = {"base_url": "http://a.test/v1", "api_keys": [{"key": "env:KEY_A", "weight": 3}]}


def _load(providers: object, routes: object, **env: str) -> None:
    load_settings(environ={"FASTPROXY_PROVIDERS": json.dumps(providers), "FASTPROXY_ROUTES": json.dumps(routes), **env})


@pytest.mark.parametrize(
    ("providers", "routes", "says"),
    [
        ({"a": GOOD_PROVIDER}, {"m": {"targets": [{"provider": "nope"}]}}, "route 'm': targets[0].provider: unknown"),
        ({"a": GOOD_PROVIDER}, {"m": {"targets": []}}, "route 'm': targets is empty"),
        ({"a": {"base_url": "ftp://x"}}, {}, "provider 'a': invalid base_url"),
        ({"a": {"base_url": "http://a", "type": "gopher"}}, {}, "provider 'a': type:"),
        ({"a": {"base_url": "http://a", "api_key": "env:MISSING_KEY"}}, {}, "MISSING_KEY is not set"),
        ({"default": {"base_url": "http://a"}}, {}, "provider 'default': the name is taken"),
        ({"a b": {"base_url": "http://a"}}, {}, "provider 'a b': invalid name"),
        ({"a": {"base_url": "http://a", "weight": 1}}, {}, "provider 'a': "),
        ({"a": {"api_key": "k"}}, {}, "provider 'a': base_url is required"),
        ({"a": GOOD_PROVIDER}, {"m": {"targets": [{"provider": "a", "weight": 0}]}}, "route 'm': targets[0].weight"),
        ({"a": GOOD_PROVIDER}, {"m": {"targets": [{"provider": "a"}], "context_fallback": "m"}}, "itself"),
        ({"a": GOOD_PROVIDER}, {"m": {"targets": [{"provider": "a"}], "cache": {"scope": "all"}}}, "'m': cache.scope"),
        ({"a": GOOD_PROVIDER}, {"m": {"targets": [{"provider": "a"}], "cache": {"ttl": 0}}}, "route 'm': cache.ttl"),
        ({"a": GOOD_PROVIDER}, {"m": {"targets": [{"provider": "a"}], "cache": {"tll": 5}}}, "route 'm': cache"),
    ],
)
def test_a_bad_provider_or_route_is_named_with_its_field(providers: object, routes: object, says: str) -> None:
    with pytest.raises(SettingsError) as caught:
        _load(providers, routes, KEY_A="sk-a-000000000001")
    message = str(caught.value)
    assert says in message and "\n" not in message


def test_env_secrets_are_read_and_never_shown() -> None:
    settings = load_settings(
        environ={
            "FASTPROXY_PROVIDERS": json.dumps({"a": GOOD_PROVIDER}),
            "FASTPROXY_ROUTES": json.dumps({"m": {"targets": [{"provider": "a", "model": "x"}]}}),
            "KEY_A": "sk-a-000000000001",
        }
    )
    assert settings.providers["a"].api_keys[0].key == "sk-a-000000000001"
    masked = json.dumps(settings.masked())
    assert "sk-a-000000000001" not in masked and "0001" in masked


def test_toml_config(tmp_path: Path) -> None:
    config = tmp_path / "fastproxy.toml"
    config.write_text(
        '[providers.azure]\ntype = "azure"\nbase_url = "https://r.openai.azure.com"\napi_key = "az-000000000001"\n'
        '[routes."gpt-4o"]\ntargets = [{ provider = "azure", model = "gpt-4o" }, { provider = "default" }]\n'
    )
    settings = load_settings(str(config), environ={})
    assert settings.providers["azure"].type == "azure"
    assert [t.provider for t in settings.routes["gpt-4o"].targets] == ["azure", "default"]


def test_a_route_s_cache_table_in_toml(tmp_path: Path) -> None:
    config = tmp_path / "fastproxy.toml"
    config.write_text(
        '[routes."emb"]\ntargets = [{ provider = "default" }]\n'
        '[routes."emb".cache]\nscope = "global"\nttl = 86400\ngenerations = "never"\nenabled = true\n'
    )
    cache = load_settings(str(config), environ={"FASTPROXY_UPSTREAM_URL": "http://a.test/v1"}).routes["emb"].cache
    assert cache is not None
    assert (cache.scope, cache.ttl, cache.generations, cache.enabled) == ("global", 86400, "never", True)


def test_serve_refuses_to_start_with_one_line(tmp_path: Path) -> None:
    env = {"FASTPROXY_ROUTES": json.dumps({"m": {"targets": [{"provider": "ghost"}]}}), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "fastproxy", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "route 'm': targets[0].provider: unknown provider 'ghost'" in lines[0], done.stderr


def test_anthropic_provider_defaults_its_url_and_sends_its_headers() -> None:
    settings = load_settings(
        environ={
            "FASTPROXY_PROVIDERS": json.dumps(
                {
                    "claude": {"type": "anthropic", "api_key": "env:ANT_KEY", "anthropic_beta": "tools-2024"},
                    "own": {"type": "anthropic", "base_url": "http://127.0.0.1:9/v1/", "default_max_tokens": 64},
                }
            ),
            "ANT_KEY": "sk-ant-000000000001",
        }
    )
    policy = BreakerPolicy()
    claude = LiveProvider("claude", settings.providers["claude"], policy)
    assert claude.translates and claude.base_url == "https://api.anthropic.com"
    assert claude.url("/chat/completions", "claude-x", "") == "https://api.anthropic.com/v1/messages"
    assert claude.url("/messages/count_tokens", "claude-x", "") == "https://api.anthropic.com/v1/messages/count_tokens"
    headers = dict(claude.keys[0].headers)
    assert headers == {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "tools-2024",
        "x-api-key": "sk-ant-000000000001",
    }
    own = LiveProvider("own", settings.providers["own"], policy)
    assert own.url("/chat/completions", "m", "") == "http://127.0.0.1:9/v1/messages"
    assert own.default_max_tokens == 64 and "anthropic-beta" not in dict(own.keys[0].headers)
    openai = LiveProvider("o", Provider(base_url="http://o/v1"), policy)
    assert not openai.translates and openai.url("/chat/completions", "m", "") == "http://o/v1/chat/completions"
