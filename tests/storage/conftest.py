"""Fixtures for the store tests: SQLite files in a temp dir, PostgreSQL schemas per run.

PostgreSQL is found through ``BUDDYRULES_TEST_POSTGRES_DSN``. Without it (or without a
reachable server) the PostgreSQL tests are skipped with the reason, except under ``CI=true``,
where either is a failure: CI must not go green by skipping the database it is meant to test.
Every schema a test run creates is named ``br_test_<pid>_<hex>`` and dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from buddyrules.storage.sqlite import SQLiteStore

from .backends import StoreSpec

DSN_VARIABLE = "BUDDYRULES_TEST_POSTGRES_DSN"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"PostgreSQL is required under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def new_schema_name() -> str:
    """A schema name no other test run uses."""
    return f"br_test_{os.getpid()}_{secrets.token_hex(4)}"


def drop_schema(dsn: str, schema: str) -> None:
    """Drop a test schema and everything in it."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """The test server's DSN, checked to answer (skip, or fail under CI, when it does not)."""
    dsn = os.environ.get(DSN_VARIABLE, "").strip()
    if not dsn:
        _unavailable(f"{DSN_VARIABLE} is not set")
    try:
        import psycopg
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        _unavailable(f"psycopg 3 / psycopg-pool are not installed ({exc})")
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        _unavailable(f"cannot connect to PostgreSQL at {dsn}: {exc}")
    return dsn


@pytest.fixture(scope="session")
def postgres_schema(postgres_dsn: str) -> Iterator[str]:
    """One migrated schema shared by the tests that work in their own tenants."""
    from buddyrules.storage.postgres import PostgresStore

    schema = new_schema_name()
    store = PostgresStore(postgres_dsn, schema=schema)
    try:
        store.migrate()
    finally:
        store.close()
    try:
        yield schema
    finally:
        drop_schema(postgres_dsn, schema)


@pytest.fixture
def fresh_postgres_schema(postgres_dsn: str) -> Iterator[str]:
    """A schema name of its own (not created yet), dropped after the test."""
    schema = new_schema_name()
    try:
        yield schema
    finally:
        drop_schema(postgres_dsn, schema)


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    """A database file path in the test's temp dir (not created yet)."""
    return tmp_path / "buddies.db"


@pytest.fixture
def make_sqlite_store(sqlite_path: Path) -> Iterator[Callable[..., SQLiteStore]]:
    """Open SQLiteStores on the test's file (all closed after the test)."""
    opened: list[SQLiteStore] = []

    def make(**options: object) -> SQLiteStore:
        store = SQLiteStore(sqlite_path, **options)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreSpec]:
    """Each durable backend in turn: a fresh SQLite file, then a fresh migrated schema."""
    if request.param == "sqlite":
        yield StoreSpec("sqlite", str(tmp_path / "durable.db"))
        return
    dsn = request.getfixturevalue("postgres_dsn")
    from buddyrules.storage.postgres import PostgresStore

    schema = new_schema_name()
    store = PostgresStore(dsn, schema=schema)
    try:
        store.migrate()
    finally:
        store.close()
    try:
        yield StoreSpec("postgres", dsn, schema)
    finally:
        drop_schema(dsn, schema)
