"""Settings come from the environment in one place, with embedded defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import ModelSpec, Settings, SettingsError, parse_models


def test_defaults_are_the_embedded_mode(tmp_path):
    settings = Settings.from_env({"POOLQ_HOME": str(tmp_path)})
    assert settings.database_url == f"sqlite:///{tmp_path / 'poolq.db'}"
    assert settings.broker_url == f"redis+socket://{tmp_path / 'redis.sock'}"
    assert settings.embedded_database and settings.embedded_broker
    assert settings.models == ()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)


def test_external_services_from_standard_variables(tmp_path):
    settings = Settings.from_env({"POOLQ_HOME": str(tmp_path), "DATABASE_URL": "postgresql://u:p@db:5432/poolq",
                                  "REDIS_URL": "redis://redis:6379/0"})
    assert settings.database_url == "postgresql+psycopg://u:p@db:5432/poolq"
    assert settings.broker_url == "redis://redis:6379/0"


def test_models_from_environment():
    settings = Settings.from_env({"POOLQ_MODELS": "a=/models/a, b=org/model?revision=v2&dtype=bfloat16&task=token_classify"})
    assert settings.models == (
        ModelSpec("a", "/models/a"),
        ModelSpec("b", "org/model", revision="v2", dtype="bfloat16", task="token_classify"),
    )
    assert settings.queue_for("b") == "pool.b"
    assert Settings.from_env({"POOLQ_NAMESPACE": "blue."}).queue_for("b") == "blue.pool.b"


@pytest.mark.parametrize("item", ["b=org/model?revision=v2&dtype=bfloat16", "a=/x", "c=/y?task=classify"])
def test_model_spec_round_trips(item):
    assert ModelSpec.parse(ModelSpec.parse(item).to_item()) == ModelSpec.parse(item)


@pytest.mark.parametrize("items,message", [
    (["noequals"], "NAME=SOURCE"),
    (["bad name=/x"], "model name"),
    (["a=/x?dtype=int3"], "dtype"),
    (["a=/x?colour=red"], "unknown option"),
    (["a=/x", "a=/y"], "given twice"),
])
def test_bad_model_specs_are_refused(items, message):
    with pytest.raises(SettingsError, match=message):
        parse_models(items)


def test_bad_numbers_are_refused():
    with pytest.raises(SettingsError, match="POOLQ_PORT"):
        Settings.from_env({"POOLQ_PORT": "eighty"})


def test_overrides_win(tmp_path):
    settings = Settings.from_env({"POOLQ_HOME": str(tmp_path)}, port=9999)
    assert settings.port == 9999 and isinstance(settings.home, Path)


def test_webhook_settings_are_part_of_settings():
    from app.webhooks.settings import STANDARD_RETRY_SCHEDULE

    assert Settings.from_env({}).webhooks.retry_schedule == STANDARD_RETRY_SCHEDULE
    assert Settings(Path("/tmp"), "sqlite://", "redis://127.0.0.1:6379/0").webhooks.allowed_hosts == frozenset()
    settings = Settings.from_env({"POOLQ_WEBHOOK_ALLOWLIST": "hooks.internal,10.0.0.0/8",
                                  "POOLQ_WEBHOOK_RETRY_SCHEDULE": "0,1", "POOLQ_WEBHOOK_READ_TIMEOUT_S": "3"})
    assert settings.webhooks.allowed_hosts == frozenset({"hooks.internal"})
    assert settings.webhooks.retry_schedule == (0.0, 1.0) and settings.webhooks.read_timeout_s == 3.0
    with pytest.raises(SettingsError, match="POOLQ_WEBHOOK_READ_TIMEOUT_S"):
        Settings.from_env({"POOLQ_WEBHOOK_READ_TIMEOUT_S": "soon"})


def test_a_deep_home_gets_its_redis_socket_under_tmp(tmp_path):
    deep = tmp_path / ("d" * 120)
    settings = Settings.from_env({"POOLQ_HOME": str(deep)})
    socket = settings.broker_url.removeprefix("redis+socket://")
    assert socket.startswith("/tmp/poolq-") and len(socket) < 100 and settings.embedded_broker
    assert Settings.from_env({"POOLQ_HOME": str(deep)}).broker_url == settings.broker_url  # one per home
