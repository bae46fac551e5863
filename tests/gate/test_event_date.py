"""The example after Epic 5 on staging: behavioral_events."eventDate", expanded, backfilled, contracted."""
from __future__ import annotations

import psycopg


def test_every_row_has_the_utc_day_of_its_timestamp_and_the_column_is_not_null(tx: psycopg.Connection) -> None:
    wrong = tx.execute('SELECT count(*) FROM behavioral_events WHERE "eventDate" IS DISTINCT FROM "timestamp"::date'
                       ).fetchone()[0]
    not_null = tx.execute("SELECT attnotnull FROM pg_attribute WHERE attrelid = 'behavioral_events'::regclass "
                          "AND attname = 'eventDate'").fetchone()[0]
    assert (wrong, not_null) == (0, True)


def test_the_application_writes_rows_without_the_column_and_the_trigger_fills_it(tx: psycopg.Connection) -> None:
    tx.execute("""INSERT INTO behavioral_events (id, "userId", "eventType", "eventData", "timestamp")
                  VALUES ('gate_event', 'gate_user', 'CARD_REVIEWED', '{}', '2026-03-01 23:59:59.999')""")
    tx.execute("""UPDATE behavioral_events SET "timestamp" = '2026-03-02 00:00:00' WHERE id = 'gate_event'""")
    day = tx.execute('SELECT "eventDate"::text FROM behavioral_events WHERE id = %s', ("gate_event",)).fetchone()[0]
    assert day == "2026-03-02"
