"""PostgresStore's libpq path: queries with client-side literals, sent without a cursor.

Needs ``BUDDYRULES_TEST_POSTGRES_DSN`` (see conftest.py: skipped without it, failed under CI).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from buddyrules.errors import StoreError
from buddyrules.state import BuddyState
from buddyrules.storage import BuddyKey

AUDIENCE = "student"
STRINGS = (
    "",
    "plain",
    "a'b",
    "''",
    "a\\b",
    "\\'",
    "trailing \\",
    "E'\\x41'",
    "$$ dollar $$",
    "%s %% %(name)s",
    "semi; colon -- comment /* c */",
    "line\nbreak\ttab\r",
    "é😀 ✓ 漢字",
    "a" * 10_000,
)


@pytest.fixture
def one_connection_store(postgres_dsn: str, postgres_schema: str) -> Iterator[Any]:
    from buddyrules.storage.postgres import PostgresStore

    store = PostgresStore(postgres_dsn, schema=postgres_schema, min_size=1, max_size=1)
    try:
        yield store
    finally:
        store.close()


def test_parameters_read_back_as_sent(postgres_dsn: str) -> None:
    import psycopg

    from buddyrules.storage.postgres import _encode

    odd_items = ["NULL", "", " x ", "a,b", "{x}", 'a"b', "a\\b", "\\", '"', "é😀"]
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        for text in STRINGS:
            values = (text, -(2**63), 2**63 - 1, True, False, None, [text, *odd_items], [])
            result = conn.pgconn.exec_params(
                b"SELECT $1::text, $2::bigint, $3::bigint, $4::boolean, $5::boolean, "
                b"$6::text, $7::text[], $8::text[]",
                [_encode(value) for value in values],
            )
            assert result.status == 2, result.error_message
            row = [result.get_value(0, i) for i in range(result.nfields)]
            loaded = conn.cursor().execute(
                "SELECT %s::text, %s::bigint, %s::bigint, %s::boolean, %s::boolean, %s::text, "
                "%s::text[], %s::text[]",
                [None if v is None else v.decode() for v in row],
            )
            assert loaded.fetchone() == (*values[:6], [text, *odd_items], [])


def test_a_parameter_has_one_of_the_known_kinds() -> None:
    from buddyrules.storage.postgres import _encode

    with pytest.raises(TypeError, match="float"):
        _encode(1.5)
    with pytest.raises(TypeError, match="strings only"):
        _encode(["a", 1])


def test_text_with_a_nul_character_is_refused(one_connection_store: Any) -> None:
    store = one_connection_store
    with pytest.raises(StoreError, match="NUL"):
        store.get_buddy("t-wire", BuddyKey("a\x00b", AUDIENCE))
    with (
        pytest.raises(StoreError, match="NUL"),
        store.unit_of_work("t-wire", BuddyKey("a\x00b", AUDIENCE)),
    ):
        pass
    assert store.get_buddy("t-wire", BuddyKey("a", AUDIENCE)) is None  # nothing was broken


def test_odd_keys_are_written_and_read_back(one_connection_store: Any) -> None:
    store = one_connection_store
    for text in STRINGS:
        key = BuddyKey(text, AUDIENCE)
        state = BuddyState(user_id=text, audience=AUDIENCE, rulebook_version=text, coins=3)
        with store.unit_of_work("t-wire-odd", key) as uow:
            uow.put_buddy(state)
        store._states = type(store._states)()  # read it from the server, not the cache
        assert store.get_buddy("t-wire-odd", key) == state
        assert store.lookup("t-wire-odd", [key, BuddyKey("x", AUDIENCE)], [])[0] == {key: state}


def test_a_failing_statement_is_a_store_error_and_the_connection_is_kept(
    one_connection_store: Any,
) -> None:
    store = one_connection_store
    assert store.get_buddy("t-wire", BuddyKey("u", AUDIENCE)) is None
    with pytest.raises(StoreError, match="buddyrules_nothing") as raised:
        store._call([(b"buddyrules_nothing", ("x",))], "testing")
    assert raised.value.details["sqlstate"] == "26000"  # invalid_sql_statement_name
    with (
        pytest.raises(Exception, match="division by zero"),
        store.unit_of_work("t-wire", BuddyKey("u", AUDIENCE)) as uow,
    ):
        uow._store._exchange_on(uow._conn, [(b"SELECT 1 / 0", None)])
    pool = store._get_pool()
    assert pool.get_stats().get("connections_num") == 1
    with store.unit_of_work("t-wire", BuddyKey("u", AUDIENCE)) as uow:
        uow.put_buddy(BuddyState(user_id="u", audience=AUDIENCE, rulebook_version="v1"))
    assert store.get_buddy("t-wire", BuddyKey("u", AUDIENCE)) is not None


def test_an_interrupted_wait_drops_the_connection(
    one_connection_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from buddyrules.storage import postgres

    store = one_connection_store
    key = BuddyKey("u-interrupted", AUDIENCE)
    assert store.get_buddy("t-wire", key) is None
    wait = postgres._wait

    def interrupted(fd: int, *, write: bool) -> None:
        monkeypatch.setattr(postgres, "_wait", wait)
        raise KeyboardInterrupt

    monkeypatch.setattr(postgres, "_wait", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.get_buddy("t-wire", key)
    # The connection was closed (its query may still have been running); the pool opens
    # another one and the store goes on.
    with store.unit_of_work("t-wire", key) as uow:
        uow.put_buddy(BuddyState(user_id=key.user_id, audience=AUDIENCE, rulebook_version="v"))
    assert store.get_buddy("t-wire", key) is not None


def test_a_dropped_schema_asks_for_migrate(postgres_dsn: str, fresh_postgres_schema: str) -> None:
    import psycopg

    from buddyrules.storage.postgres import PostgresStore

    store = PostgresStore(postgres_dsn, schema=fresh_postgres_schema, min_size=1, max_size=1)
    try:
        store.migrate()
        assert store.get_buddy("t-wire", BuddyKey("u", AUDIENCE)) is None  # prepared now
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{fresh_postgres_schema}" CASCADE')
        with pytest.raises(StoreError, match=r"migrate\(\)"):
            store.get_buddy("t-wire", BuddyKey("u", AUDIENCE))
    finally:
        store.close()
