"""Shared fixtures: real Postgres and Redis, tiny local models, a real worker.

Postgres: a fresh database per test session, built by `alembic upgrade head`.
Redis: one logical database (POOLQ_TEST_REDIS_DB, default 9); each session
uses its own namespace for queues and channels, so concurrent runs never
take each other's messages (see `namespace`).
Set POOLQ_TEST_PG (a server URL without database) or POOLQ_TEST_REDIS to
point elsewhere.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/tiny_models.py

PG_SERVER = os.environ.get("POOLQ_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("POOLQ_TEST_REDIS", f"redis://127.0.0.1:6379/{os.environ.get('POOLQ_TEST_REDIS_DB', '9')}")


@pytest.fixture(scope="session")
def pg_url():
    """A new Postgres database at the migrations' head; dropped afterwards."""
    # Imported here, not at the top: the engine tests also run on the GPU
    # machine, which has torch but neither psycopg nor poolq's service stack.
    import psycopg

    from app.db.migrate import upgrade

    name = f"poolq_test_{secrets.token_hex(4)}"
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG_SERVER.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"
    upgrade(url)
    yield url
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url():
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.ping()
    yield REDIS_URL


@pytest.fixture(scope="session")
def namespace():
    return f"test{secrets.token_hex(4)}."


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")
