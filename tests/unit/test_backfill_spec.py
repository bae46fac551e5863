"""backfill.yaml as read: the defaults, and every refusal's message."""
from __future__ import annotations

from pathlib import Path

import pytest

from schema_deploy.backfill.errors import BackfillSpecError
from schema_deploy.backfill.engine import next_rows
from schema_deploy.backfill.spec import MB, load_spec

GOOD = "table: public.behavioral_events\nkey: id\nset:\n  eventDate: (\"timestamp\" AT TIME ZONE 'UTC')::date\n" \
       "where: '\"eventDate\" IS NULL'\n"


def read(tmp_path: Path, text: str):
    path = tmp_path / "20261201000100_x" / "backfill.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return load_spec("20261201000100_x", path, path.read_bytes()), path


def test_a_minimal_backfill_takes_the_defaults(tmp_path: Path) -> None:
    spec, path = read(tmp_path, GOOD)
    assert (spec.id, spec.table, spec.key, spec.where) == ("20261201000100_x", "public.behavioral_events", "id",
                                                          '"eventDate" IS NULL')
    assert spec.set == (("eventDate", "(\"timestamp\" AT TIME ZONE 'UTC')::date"),)
    assert (spec.target_s, spec.min_rows, spec.max_rows, spec.first_rows) == (0.5, 100, 50_000, 1_000)
    assert (spec.wal_budget_bytes_per_s, spec.lock_timeout_ms) == (16 * MB, 1000)
    assert len(spec.digest) == 64 and spec.path == path
    assert spec.describe() == ('backfill 20261201000100_x: public.behavioral_events.eventDate where "eventDate" IS '
                               "NULL, in batches walking id (about 500 ms each, 100-50000 rows), WAL budget 16 MB/s, "
                               "lock_timeout 1000 ms")


@pytest.mark.parametrize(("text", "message"), [
    ("key: id\nset: {a: '1'}\nwhere: 'a IS NULL'\n", "table: missing. Add it: it has no default (see docs/backfills.md)."),
    (GOOD + "batch_size: 10\n", "batch_size: not a key of backfill.yaml. Use one of: batch, key, lock_timeout_ms, "
                                "set, table, wal_budget_mb_per_s, where."),
    (GOOD + "batch: {rows: 10}\n", "batch.rows: not a key of backfill.yaml. Use one of: first_rows, max_rows, "
                                   "min_rows, target_ms."),
    ("table: t\nkey: id\nset: {}\nwhere: 'a IS NULL'\n", "set: empty. Give at least one column: expression."),
    (GOOD + "lock_timeout_ms: 0\n", "lock_timeout_ms: input should be greater than or equal to 1, got 0. Fix its value."),
    (GOOD + "batch: {min_rows: 500, max_rows: 100}\n",
     "batch.min_rows (500) is more than batch.max_rows (100). Make min_rows at most max_rows."),
    ("table: t\nkey: id\nset: {a: '1); DROP TABLE t; SELECT (1'}\nwhere: 'a IS NULL'\n",
     "set.a: '1); DROP TABLE t; SELECT (1' is not one SQL expression. Write one expression, as it would follow "
     "SELECT (no ';', no second statement)."),
    ("table: t\nkey: id\nset: {a: '1'}\nwhere: 'a IS'\n",
     "where: 'a IS' is not an SQL expression (syntax error at or near \")\"). Write one expression, as "
     "it would follow SELECT."),
    ("table: [t\n", "is not valid YAML at line 2, column 1 (expected ',' or ']', but got '<stream end>'). Fix the YAML: "
                    "keys table, key, set, where (see docs/backfills.md)."),
    ("- t\n", "is not a mapping. Write its keys (table, key, set, where) one per line."),
])
def test_a_backfill_that_cannot_run_as_written_is_refused_naming_the_file_and_the_fix(tmp_path: Path, text: str,
                                                                                     message: str) -> None:
    with pytest.raises(BackfillSpecError) as err:
        read(tmp_path, text)
    assert str(err.value) == f"{tmp_path / '20261201000100_x' / 'backfill.yaml'}: {message}"


def test_the_next_batch_fits_the_target_duration_and_a_tenth_of_a_second_of_the_wal_budget(tmp_path: Path) -> None:
    spec, _ = read(tmp_path, GOOD)  # 0.5 s per batch, 16 MB/s, 100 to 50,000 rows
    assert next_rows(spec, 1000, 1000, 0.25, 100) == 2000  # twice as fast as the target: at most doubles
    assert next_rows(spec, 1000, 1000, 1.0, 100) == 500  # twice as slow: half
    assert next_rows(spec, 2000, 2000, 0.1, 1024) == 1638  # 1 kB a row: 1.6 MB (0.1 s of budget) is 1638 rows
    assert next_rows(spec, 100, 100, 5.0, 1) == 100  # never under min_rows
    assert next_rows(spec, 40_000, 40_000, 0.01, 1) == 50_000  # nor over max_rows
    assert next_rows(spec, 1000, 0, 0.01, 0) == 1000  # nothing done: no measure, same size


def test_the_pacer_keeps_any_second_of_wal_within_the_budget_with_room_for_a_mis_estimate() -> None:
    from schema_deploy.backfill.engine import Pacer

    now, slept = [0.0], []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    pace = Pacer(1000, lambda: now[0], sleep)
    pace.wait_for_room(10)  # nothing written yet: no wait
    pace.wrote(10, 400)  # 40 bytes a row
    assert pace.per_row() == 40 and slept == []
    pace.wait_for_room(10)  # 400 + 400 <= 850: at once
    pace.wrote(10, 400)
    pace.wait_for_room(10)  # 800 + 400 > 850: until the first batch is a second old
    assert slept == [1.0] and now[0] == 1.0
    pace.wrote(10, 1200)  # a batch after a checkpoint: 120 bytes a row, and the estimate follows it
    assert pace.per_row() == 120
    for _ in range(25):
        pace.wrote(10, 400)
    assert pace.per_row() == 40  # twenty batches later, forgotten


def test_a_release_freezes_a_migrations_backfill_and_gives_it_back(tmp_path: Path) -> None:
    from schema_deploy.bundle.discover import load_bundle
    from schema_deploy.ops.release import freeze

    folder = tmp_path / "migrations" / "20261201000100_x"
    folder.mkdir(parents=True)
    (folder / "migration.sql").write_text("ALTER TABLE t ADD COLUMN a int;\n")
    (folder / "backfill.yaml").write_text("table: t\nkey: id\nset: {a: '1'}\nwhere: a IS NULL\n")
    release = freeze(load_bundle(tmp_path / "migrations"), "main")
    (frozen,) = release.files
    assert frozen.backfill == "table: t\nkey: id\nset: {a: '1'}\nwhere: a IS NULL\n"
    assert frozen.as_dict()["backfill"] == frozen.backfill
    (again,) = release.to_bundle().migrations
    assert again.backfill_raw == (folder / "backfill.yaml").read_bytes()

    (folder / "backfill.yaml").write_text("table: t\nkey: id\nset: {a: '1'}\nwhere: 'a IS'\n")
    with pytest.raises(BackfillSpecError) as err:  # a release never freezes a backfill that cannot run
        freeze(load_bundle(tmp_path / "migrations"), "main")
    assert str(err.value).startswith(f"{folder / 'backfill.yaml'}: where: 'a IS' is not an SQL expression")


def test_a_migration_without_a_backfill_keeps_its_releases_digest(tmp_path: Path) -> None:
    from schema_deploy.bundle.discover import load_bundle
    from schema_deploy.ops.release import freeze

    folder = tmp_path / "migrations" / "20261201000100_x"
    folder.mkdir(parents=True)
    (folder / "migration.sql").write_text("SELECT 1;\n")
    (frozen,) = freeze(load_bundle(tmp_path / "migrations"), "main").files
    assert frozen.backfill is None and "backfill" not in frozen.as_dict()


def test_after_a_checkpoint_the_pacer_assumes_whole_pages_until_a_batch_measures_them() -> None:
    from schema_deploy.backfill.engine import Pacer

    pace = Pacer(1000, lambda: 0.0, lambda s: None)
    pace.wrote(10, 400)
    pace.wrote(10, 500)
    pace.checkpoint_started(8192 * 3)
    assert pace.per_row() == 8192 * 3  # a heap page and two index pages a row, at worst
    pace.wrote(10, 30_000)  # what it really cost: 3,000 bytes a row
    assert pace.per_row() == 3000  # measured: the assumption is dropped, not kept as the largest
    pace.wrote(10, 400)
    assert pace.per_row() == 3000


@pytest.mark.parametrize(("folders", "extra", "message"), [
    ({"20261201000100_x": None}, [], "{root}: no migration declares a backfill (a backfill.yaml beside its "
                                     "migration.sql); see docs/backfills.md."),
    ({"20261201000100_x": GOOD, "20261201000200_y": GOOD}, [],
     "2 migrations declare a backfill: name one with --name (20261201000100_x, 20261201000200_y)."),
])
def test_backfill_run_names_what_is_wrong_with_the_bundles_backfills_before_connecting(
        tmp_path: Path, capsys, folders: dict, extra: list, message: str) -> None:
    from schema_deploy.cli.main import main

    root = tmp_path / "migrations"
    for name, backfill in folders.items():
        (root / name).mkdir(parents=True)
        (root / name / "migration.sql").write_text("SELECT 1;\n")
        if backfill:
            (root / name / "backfill.yaml").write_text(backfill)
    # Port 9: nothing listens there; these are refused before any connection is tried.
    code = main(["backfill", "run", "--migrations", str(root), "--db", "postgresql://u@127.0.0.1:9/db", *extra])
    assert (code, capsys.readouterr().err.strip()) == (2, "error: " + message.format(root=root))


def test_pausing_without_a_name_is_refused_naming_the_option(capsys) -> None:
    from schema_deploy.cli.main import main

    assert main(["backfill", "pause", "--db", "postgresql://u@127.0.0.1:9/db"]) == 2
    assert capsys.readouterr().err.strip() == "error: backfill pause: name the backfill with --name MIGRATION."
