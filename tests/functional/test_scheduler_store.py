"""The scheduler's transactions (workers/scheduler/store.py): each thread keeps one connection, a
transaction makes a Session only when its work needs one, and a broken connection is replaced."""
from __future__ import annotations

import secrets
import threading

import psycopg
import pytest
from sqlalchemy import text

from app.db import make_engine
from app.db.driver import driver_rows
from workers.scheduler.store import Store


@pytest.fixture
def store_and_table(pg_url):
    engine = make_engine(pg_url, pool_pre_ping=False, pool_size=4, max_overflow=0)
    table = f"store_probe_{secrets.token_hex(4)}"
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE TABLE {table} (n integer PRIMARY KEY)")
    yield Store(engine), table, pg_url.replace("postgresql+psycopg://", "postgresql://")
    with engine.begin() as connection:
        connection.exec_driver_sql(f"DROP TABLE {table}")
    engine.dispose()


def _backend_pid(tx) -> int:
    return driver_rows(tx.connection(), "SELECT pg_backend_pid()", {})[0][0]


def _committed(url: str, table: str) -> list[int]:
    with psycopg.connect(url) as other:
        return [n for n, in other.execute(f"SELECT n FROM {table} ORDER BY n")]


def test_a_threads_transactions_share_one_connection_and_each_commits(store_and_table):
    store, table, url = store_and_table

    def insert(n):
        def work(tx):
            driver_rows(tx.connection(), f"INSERT INTO {table} VALUES (%(n)s) RETURNING n", {"n": n})
            return _backend_pid(tx)
        return work

    first = store.transact("probe", insert(1))
    assert _committed(url, table) == [1]
    assert store.transact("probe", insert(2)) == first  # the same server backend: the same connection
    other = []
    thread = threading.Thread(target=lambda: other.append(store.transact("probe", insert(3))))
    thread.start()
    thread.join()
    assert other and other[0] != first  # another thread keeps its own
    assert _committed(url, table) == [1, 2, 3]


def test_a_kept_connection_killed_between_transactions_is_replaced_and_the_work_commits(store_and_table):
    store, table, url = store_and_table
    killed = store.transact("probe", _backend_pid)
    with psycopg.connect(url, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (killed,)).fetchone()[0]
    pid = store.transact("probe", lambda tx: (driver_rows(tx.connection(), f"INSERT INTO {table} VALUES (7) "
                                                                            "RETURNING n", {}), _backend_pid(tx))[1])
    assert pid != killed and _committed(url, table) == [7]


def test_plain_statements_and_the_session_commit_or_roll_back_together(store_and_table):
    store, table, url = store_and_table

    def both(n, fail=False):
        def work(tx):
            driver_rows(tx.connection(), f"INSERT INTO {table} VALUES (%(n)s) RETURNING n", {"n": n})
            tx.execute(text(f"INSERT INTO {table} VALUES (:n)"), {"n": n + 1})  # makes the Session
            assert tx.session is not None
            if fail:
                raise ValueError("the work's own error")
        return work

    store.transact("probe", both(10))
    assert _committed(url, table) == [10, 11]
    with pytest.raises(ValueError):  # not the database's: not retried, nothing of it written
        store.transact("probe", both(20, fail=True))
    assert _committed(url, table) == [10, 11]
    store.transact("probe", both(30))  # the connection was left in no transaction
    assert _committed(url, table) == [10, 11, 30, 31]
