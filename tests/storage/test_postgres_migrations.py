"""PostgresStore's forward migrations, from each earlier schema version to the latest.

Needs ``BUDDYRULES_TEST_POSTGRES_DSN`` (see conftest.py: skipped without it, failed under CI).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from buddyrules.state import BuddyState
from buddyrules.storage import BuddyKey, LedgerRecord, Receipt

AUDIENCE = "student"
AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _store_at(version: int, dsn: str, schema: str) -> Any:
    """A store of the release whose latest schema version was ``version``."""
    from buddyrules.storage.postgres import MIGRATIONS, PostgresStore

    class Older(PostgresStore):
        migrations = tuple(m for m in MIGRATIONS if m.version <= version)

    return Older(dsn, schema=schema)


def _fill_v1(dsn: str, schema: str, tenant: str) -> list[BuddyState]:
    """Rows as a store of schema version 1 wrote them (states as jsonb)."""
    import psycopg
    from psycopg.types.json import Jsonb

    s = f'"{schema}"'
    states = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i, user_id in enumerate(("u0", "a'b", "é😀")):
            state = BuddyState(
                user_id=user_id,
                audience=AUDIENCE,
                rulebook_version="v1",
                coins=i,
                counters={"lesson": i + 1, "quiz": 2},
            )
            conn.execute(
                f"INSERT INTO {s}.buddies (tenant, user_id, audience, state) "
                "VALUES (%s, %s, %s, %s::jsonb)",
                (tenant, user_id, AUDIENCE, state.model_dump_json()),
            )
            conn.execute(
                f"INSERT INTO {s}.receipts (tenant, event_id, fingerprint, user_id, audience, "
                "effects) VALUES (%s, %s, 'fp', %s, %s, %s::json)",
                (tenant, f"e-{i}", user_id, AUDIENCE, f'{{"coins": {i}, "z": [1]}}'),
            )
            for currency, amount, reference in (("coins", i, f"e-{i}"), ("token:xp", 2, None)):
                conn.execute(
                    f"INSERT INTO {s}.ledger (tenant, user_id, audience, currency, amount, "
                    "balance_after, reason, reference, at) "
                    "VALUES (%s, %s, %s, %s, %s, %s, 'lesson', %s, %s)",
                    (tenant, user_id, AUDIENCE, currency, amount, amount, reference, AT),
                )
            conn.execute(
                f"INSERT INTO {s}.outbox (tenant, type, user_id, audience, payload, at) "
                "VALUES (%s, 'buddy.hatched', %s, %s, %s, %s)",
                (tenant, user_id, AUDIENCE, Jsonb({"i": i}), AT),
            )
            states.append(state)
    return states


def _columns(dsn: str, schema: str) -> dict[str, str]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = %s",
            (schema,),
        ).fetchall()
    return dict(rows)


def _indexes(dsn: str, schema: str, table: str) -> dict[str, str]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = %s",
            (schema, table),
        ).fetchall()
    return {name: definition.split(" USING ")[1] for name, definition in rows}


def test_version_2_stores_states_as_text_and_keys_the_ledger_by_tenant(
    postgres_dsn: str, fresh_postgres_schema: str
) -> None:
    schema = fresh_postgres_schema
    old = _store_at(1, postgres_dsn, schema)
    try:
        assert old.migrate() == [1]
    finally:
        old.close()
    states = _fill_v1(postgres_dsn, schema, "t-a")
    _fill_v1(postgres_dsn, schema, "t-b")
    assert _columns(postgres_dsn, schema)["buddies.state"] == "jsonb"

    new = _store_at(2, postgres_dsn, schema)
    try:
        assert new.migrate() == [2]
        assert _columns(postgres_dsn, schema)["buddies.state"] == "text"
        assert _indexes(postgres_dsn, schema, "ledger") == {
            "ledger_pkey": "btree (tenant, id)",
            "ledger_by_buddy": "btree (tenant, user_id, audience, id)",
        }
        # Everything written before reads back the same (states from jsonb's text form).
        assert new.export_states("t-a") == sorted(states, key=lambda s: s.user_id)
        ledger_before = new.ledger("t-a")
        assert [(e.user_id, e.currency, e.amount) for e in ledger_before] == [
            (user_id, currency, amount)
            for i, user_id in enumerate(("u0", "a'b", "é😀"))
            for currency, amount in (("coins", i), ("token:xp", 2))
        ]
        key = BuddyKey("a'b", AUDIENCE)
        assert new.ledger("t-a", key) == [e for e in ledger_before if e.user_id == "a'b"]
        assert new.get_receipt("t-a", "e-1") == Receipt(
            "e-1", "fp", "a'b", AUDIENCE, {"coins": 1, "z": [1]}
        )
        assert len(new.outbox_pending("t-b")) == 3
        # And new writes go on: ids keep growing, states are stored as written.
        with new.unit_of_work("t-a", key) as uow:
            stored = uow.get_buddy()
            assert stored == states[1]
            uow.put_buddy(stored.model_copy(update={"coins": 40}))
            uow.append_ledger([LedgerRecord("a'b", AUDIENCE, "coins", 39, 40, "admin", None, AT)])
        ledger_after = new.ledger("t-a")
        assert ledger_after[:-1] == ledger_before
        assert ledger_after[-1].id > max(e.id for e in new.ledger("t-b"))
        import psycopg

        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            row = conn.execute(
                f"SELECT state, state::jsonb ->> 'coins' FROM \"{schema}\".buddies "
                "WHERE tenant = 't-a' AND user_id = %s",
                ("a'b",),
            ).fetchone()
        assert row is not None
        assert row[0] == stored.model_copy(update={"coins": 40}).model_dump_json()
        assert row[1] == "40"
    finally:
        new.close()
