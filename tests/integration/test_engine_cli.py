"""`python -m schema_deploy`: exit codes, stdout vs stderr, --json, secrets, and concurrent runs.

Exit codes: 0 success; 1 pending/failed/drift or a failed deployment; 2 bad input
or configuration. Data on stdout, messages on stderr.

A few tests run the real command in a subprocess (what an operator runs, and
what five concurrent deployments are); the rest call `cli.main()` in-process
with captured output, which exercises the same code in a fraction of the time.
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from engine_support import (BASELINE, CONTRACT, EPIC5, EXPAND, MIGRATIONS, REPO, SHIPPED, cli_command, cli_env,
                            copy_bundle, ledger, run_cli)

from schema_deploy.cli.main import main


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{password}@{parts.hostname}:{parts.port}"))


# --- status, apply, plan -------------------------------------------------------------------

def test_status_of_a_fresh_database_lists_pending_migrations_and_exits_1(fresh_db: str, cli) -> None:
    result = cli("status", "--db", fresh_db)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["migration", "state", "applied", "at", "checksum"]
    assert lines[1].split()[:2] == [BASELINE, "pending"]
    assert [line.split()[:2] for line in lines[2:5]] == [[EPIC5, "pending"], [EXPAND, "pending"], [CONTRACT, "pending"]]
    assert lines[-1] == "4 pending, 0 failed, 0 drifted"
    assert result.stderr == ""


@pytest.mark.slow
def test_apply_prints_what_it_applied_on_stdout_and_progress_on_stderr(fresh_db: str) -> None:
    result = run_cli("apply", "--db", fresh_db)
    assert result.returncode == 0, result.stderr
    applied = result.stdout.splitlines()
    assert [line.split()[:2] for line in applied] == [["applied", name] for name in SHIPPED]
    assert "waiting for the migration lock (pg_advisory_lock 72707369)" in result.stderr
    assert f"{EPIC5}: applying in one transaction" in result.stderr

    after = run_cli("status", "--db", fresh_db)
    assert after.returncode == 0, after.stderr
    assert after.stdout.splitlines()[-1] == "database is up to date"

    again = run_cli("apply", "--db", fresh_db)
    assert (again.returncode, again.stdout) == (0, "nothing to apply\n")
    assert "nothing to apply: every migration is applied" in again.stderr


def test_json_output_parses_and_carries_the_data(fresh_db: str, cli) -> None:
    before = cli("status", "--db", fresh_db, "--json")
    assert before.returncode == 1
    data = json.loads(before.stdout)
    assert data["clean"] is False and data["counts"] == {"pending": 4}
    assert [m["name"] for m in data["migrations"]] == SHIPPED

    applied = cli("apply", "--db", fresh_db, "--json")
    assert applied.returncode == 0, applied.stderr
    result = json.loads(applied.stdout)
    assert [m["name"] for m in result["applied"]] == SHIPPED
    assert result["backfills"] == []  # no rows: the example's backfill had nothing to do
    assert all(len(m["checksum"]) == 64 and m["lock_retries"] == 0 for m in result["applied"])

    after = json.loads(cli("status", "--db", fresh_db, "--json").stdout)
    assert after["clean"] is True and after["counts"] == {"applied": 4}
    assert all(m["checksum"] == m["ledger_checksum"] for m in after["migrations"])


def test_apply_to_a_name_stops_after_that_migration(fresh_db: str, cli) -> None:
    result = cli("apply", "--db", fresh_db, "--to", BASELINE)
    assert result.returncode == 0, result.stderr
    assert [line.split()[1] for line in result.stdout.splitlines()] == [BASELINE]
    assert [r["migration_name"] for r in ledger(fresh_db)] == [BASELINE]
    assert json.loads(cli("status", "--db", fresh_db, "--json").stdout)["counts"] == {"applied": 1, "pending": 3}


def test_apply_to_an_unknown_name_is_a_usage_error(fresh_db: str, cli) -> None:
    result = cli("apply", "--db", fresh_db, "--to", "20990101000000_nope")
    assert result.returncode == 2
    assert (f"error: --to 20990101000000_nope: no such migration in {MIGRATIONS.relative_to(REPO)}; "
            f"use a folder name, e.g. {BASELINE}.\n") in result.stderr
    assert result.stdout == ""


def test_plan_shows_steps_locks_and_table_sizes(fresh_db: str, cli) -> None:
    assert cli("apply", "--db", fresh_db, "--to", BASELINE).returncode == 0
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("""INSERT INTO behavioral_events (id, "userId", "eventType", "eventData")
                        SELECT g::text, 'u' || (g % 7), 'CARD_REVIEWED', '{}' FROM generate_series(1, 500) g""")
        conn.execute("ANALYZE behavioral_events")

    text = cli("plan", "--db", fresh_db)
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert out.startswith(f"== {EPIC5}  (sha256 ")
    assert "   step 1 [" in out
    assert "ACCESS EXCLUSIVE on experiment_assignments" in out
    assert f"{EPIC5}/migration.sql:6: ALTER TABLE \"experiment_assignments\" ADD COLUMN \"metrics\" JSONB" in out
    assert "tables touched:" in out
    (events,) = [line for line in out.splitlines() if line.strip().startswith("behavioral_events ")]
    assert re.search(r"~\s*500 rows\s+[\d.]+ MB$", events), events
    # The online steps production's health gate paces, and the gate's settings (deploy.yaml's health:).
    online = out
    assert re.search(r"^   step \d+ \[autocommit\] SHARE UPDATE EXCLUSIVE on behavioral_events; health-gated in "
                     r"production \(index build\)$", online, re.M), online
    assert online.rstrip().endswith(
        "in production, the health gate before each online step: replica replay lag under 64.0 MB, WAL under "
        "64.0 MB/s, no transaction open longer than 600 s, at most 0 session(s) waiting on our locks, no wraparound "
        "autovacuum on the step's tables; checked every 2 s, for at most 600 s"), online[-600:]

    data = json.loads(cli("plan", "--db", fresh_db, "--json").stdout)
    migration, *after = data["migrations"]
    assert migration["name"] == EPIC5 and [m["name"] for m in after] == [EXPAND, CONTRACT]
    assert migration["steps"]
    assert all({"step", "transaction", "locks", "statements"} <= set(step) for step in migration["steps"])
    locked = {t for s in migration["steps"] for t in s["locks"]}
    assert {"experiment_assignments", "behavioral_events", "personalization_configs"} <= locked
    assert data["table_sizes"]["behavioral_events"]["rows_estimate"] == 500
    assert data["table_sizes"]["behavioral_events"]["bytes"] > 0
    assert data["health"]["max_replica_lag_bytes"] == 64 * 1024 * 1024 and data["health"]["enabled"] is True
    assert ledger(fresh_db, EPIC5) == []  # plan changes nothing


# --- drift and refusals via the CLI ---------------------------------------------------------

def test_status_is_clean_for_a_crlf_checkout_and_drift_for_an_edit(fresh_db: str, tmp_path: Path, cli) -> None:
    assert cli("apply", "--db", fresh_db).returncode == 0
    root = copy_bundle(tmp_path)
    path = root / EPIC5 / "migration.sql"
    original = path.read_bytes()

    path.write_bytes(original.replace(b"\n", b"\r\n"))
    crlf = cli("status", "--db", fresh_db, "--migrations", str(root))
    assert crlf.returncode == 0, crlf.stdout
    assert crlf.stdout.splitlines()[-1] == "database is up to date"

    path.write_bytes(original.replace(b"personalization_configs_userId_avgReward_idx",
                                      b"personalization_configs_userId_avgReward_idy"))
    edited = cli("status", "--db", fresh_db, "--migrations", str(root))
    assert edited.returncode == 1
    assert edited.stdout.splitlines()[2].split()[:2] == [EPIC5, "edited-after-apply"]
    assert edited.stdout.splitlines()[-1] == "0 pending, 0 failed, 1 drifted"

    refused = cli("apply", "--db", fresh_db, "--migrations", str(root))
    assert refused.returncode == 1
    assert f"- {EPIC5} was edited after it was applied" in refused.stderr
    assert "Restore the applied version of the file from version control" in refused.stderr


def test_resolve_exit_codes_and_messages(fresh_db: str, cli) -> None:
    assert cli("apply", "--db", fresh_db).returncode == 0
    refused = cli("resolve", "--db", fresh_db, "--rolled-back", EPIC5)
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"error: cannot mark {EPIC5} as rolled back: it is not in a failed state")
    assert "P3012" in refused.stderr

    twice = cli("resolve", "--db", fresh_db, "--applied", EPIC5)
    assert twice.returncode == 1 and "P3008" in twice.stderr


def test_resolve_applied_baselines_a_fresh_database(fresh_db: str, cli) -> None:
    result = cli("resolve", "--db", fresh_db, "--applied", BASELINE)
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"marked {BASELINE} as applied\n"
    (row,) = ledger(fresh_db)
    assert row["migration_name"] == BASELINE and row["logs"] == ""


def test_failed_migration_exits_1_and_status_lists_it_as_failed(fresh_db: str, tmp_path: Path, cli) -> None:
    root = tmp_path / "m"
    root.mkdir()
    (root / "20250101000000_t.sql").write_text("CREATE TABLE t (a int);\n")
    (root / "20250102000000_bad.sql").write_text("CREATE INDEX CONCURRENTLY t_a_idx ON t (a);\nSELECT 1/0;\n")
    failed = cli("apply", "--db", fresh_db, "--migrations", str(root))
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert (f"error: migration 20250102000000_bad failed at step 2 of 2, {root}/20250102000000_bad.sql:2: "
            "SQLSTATE 22012: division by zero") in failed.stderr

    listed = cli("status", "--db", fresh_db, "--migrations", str(root))
    assert listed.returncode == 1
    assert listed.stdout.splitlines()[2].split()[:2] == ["20250102000000_bad", "failed"]
    assert listed.stdout.splitlines()[-1] == "0 pending, 1 failed, 0 drifted"

    resolved = cli("resolve", "--db", fresh_db, "--migrations", str(root), "--rolled-back", "20250102000000_bad")
    assert (resolved.returncode, resolved.stdout) == (0, "")
    assert resolved.stderr == "marked 1 failed row(s) of 20250102000000_bad as rolled back\n"
    assert cli("status", "--db", fresh_db, "--migrations", str(root)).stdout.splitlines()[-1] == (
        "1 pending, 0 failed, 0 drifted")


def test_status_says_when_a_migration_was_interrupted(fresh_db: str, cli) -> None:
    assert cli("apply", "--db", fresh_db, "--to", BASELINE).returncode == 0
    checksum = hashlib.sha256((MIGRATIONS / EPIC5 / "migration.sql").read_bytes()).hexdigest()
    with psycopg.connect(fresh_db, autocommit=True) as conn:  # what a killed stepped run of ours leaves
        conn.execute("INSERT INTO _prisma_migrations (id, checksum, migration_name, logs) "
                     "VALUES (gen_random_uuid(), %s, %s, '[schema-deploy: in progress] plan=0123abcd steps=16')",
                     (checksum, EPIC5))
    result = cli("status", "--db", fresh_db)
    assert result.returncode == 1
    assert result.stdout.splitlines()[2].split()[:2] == [EPIC5, "interrupted"]
    assert result.stdout.splitlines()[-1] == ("2 pending, 0 failed, 0 drifted, 1 interrupted "
                                              "(apply resumes where it stopped)")


def test_syntax_error_in_a_migration_exits_2_with_its_position(fresh_db: str, tmp_path: Path, cli) -> None:
    root = tmp_path / "m"
    root.mkdir()
    (root / "20250101000000_typo.sql").write_text("-- oops\nCREATE TABEL t (a int);\n")
    result = cli("apply", "--db", fresh_db, "--migrations", str(root))
    assert result.returncode == 2
    assert ("error: refusing to deploy: migration 20250101000000_typo cannot be applied as written; nothing was "
            f"changed:\n{root}/20250101000000_typo.sql:2:8: syntax error: syntax error at or near \"TABEL\"\n"
            "    CREATE TABEL t (a int);\n") in result.stderr
    assert ledger(fresh_db) == []


# --- bad input: exit 2, no secrets, no tracebacks ------------------------------------------

def bad_urls(stack_env: dict[str, str]) -> dict[str, tuple[str, str, str]]:
    """id -> (url, the secret that must not appear, what the message must say)."""
    real = stack_env["STAGING_DATABASE_URL"]
    return {
        "wrong-password": (with_password(real, "Wr0ngPassw0rd"), "Wr0ngPassw0rd", "password authentication failed"),
        "nothing-listening": ("postgresql://migrator:N0body-Listens@127.0.0.1:1/x", "N0body-Listens",
                              "Connection refused"),
        "bad-port": ("postgresql://migrator:BadP0rt-Secret@127.0.0.1:notaport/x", "BadP0rt-Secret",
                     'invalid integer value "notaport"'),
        "unknown-host": ("postgresql://migrator:Unkn0wn-Host@db.invalid:5432/x", "Unkn0wn-Host", "db.invalid"),
        "unencoded-at-in-password": ("postgresql://migrator:Spl1t@Secret@127.0.0.1:55432/x", "Secret",
                                     "Percent-encode them in the URL ('@' as %40"),
        "not-postgres": ("mysql://root:MyS3cret@127.0.0.1/x", "MyS3cret", "is not a PostgreSQL URL"),
        "password-in-query": (real.split("@")[0].rsplit(":", 1)[0] + "@127.0.0.1:55432/x?password=Qu3ryS3cret",
                              "Qu3ryS3cret", "password authentication failed"),
    }


@pytest.mark.parametrize("case", ["wrong-password", "nothing-listening", "bad-port", "unknown-host",
                                  "unencoded-at-in-password", "not-postgres", "password-in-query"])
def test_bad_database_url_exits_2_without_the_password(stack_env: dict[str, str], case: str, cli) -> None:
    url, secret, expected = bad_urls(stack_env)[case]
    result = cli("status", "--db", url)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    assert expected in result.stderr
    assert secret not in result.stderr


def test_wrong_password_from_the_real_command_is_one_line_without_password_or_traceback(
        stack_env: dict[str, str]) -> None:
    url = with_password(stack_env["STAGING_DATABASE_URL"], "Wr0ngPassw0rd")
    result = run_cli("apply", "--db", url)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: cannot connect to postgresql://migrator:****@127.0.0.1:")
    assert 'password authentication failed for user "migrator"' in result.stderr
    assert "Wr0ngPassw0rd" not in result.stderr and "Traceback" not in result.stderr


def test_missing_database_url_exits_2_with_how_to_give_one(cli) -> None:
    result = cli("status")
    assert result.returncode == 2
    assert result.stderr == ("error: no database given: pass --db postgresql://user:****@host:port/dbname "
                             "or set DATABASE_URL.\n")


def test_database_url_may_come_from_the_environment(fresh_db: str, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    result = cli("status")
    assert result.returncode == 1 and result.stdout.splitlines()[-1] == "4 pending, 0 failed, 0 drifted"


def test_bad_migrations_folder_exits_2_naming_the_folder(fresh_db: str, tmp_path: Path, cli) -> None:
    result = cli("status", "--db", fresh_db, "--migrations", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert result.stderr == (f"error: {tmp_path / 'nope'}: migrations folder not found. "
                             "Pass the folder that holds your migrations with --migrations DIR.\n")
    assert result.stdout == ""


# --- concurrency ------------------------------------------------------------------------------

@pytest.mark.slow
def test_five_concurrent_applies_apply_each_migration_exactly_once(fresh_db: str) -> None:
    procs = [subprocess.Popen(cli_command("apply", "--db", fresh_db), cwd=REPO, env=cli_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(5)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 5, outputs
    # One process applied every migration; the other four waited for it and found nothing to do.
    appliers = [out for out, _ in outputs if out != "nothing to apply\n"]
    assert len(appliers) == 1, outputs
    assert [line.split()[1] for line in appliers[0].splitlines()] == SHIPPED
    rows = ledger(fresh_db)
    assert sorted(r["migration_name"] for r in rows) == SHIPPED
    assert all(r["finished_at"] is not None and r["rolled_back_at"] is None for r in rows)


def test_a_zero_lock_timeout_is_refused_because_it_means_wait_forever(fresh_db: str) -> None:
    from schema_deploy.cli.main import main

    assert main(["apply", "--db", fresh_db, "--lock-timeout-ms", "0"]) == 2


def test_an_unexpected_database_error_is_a_message_not_a_traceback(fresh_db: str, capsys) -> None:
    import psycopg

    from schema_deploy.cli.main import main

    with psycopg.connect(fresh_db, autocommit=True) as conn:  # a ledger we may not read
        conn.execute('CREATE TABLE "_prisma_migrations" (id int)')
    code = main(["status", "--db", fresh_db])
    err = capsys.readouterr().err
    assert code == 1 and "error: the database answered" in err and "SQLSTATE 42703" in err
    assert "Traceback" not in err and fresh_db.split(":")[2].split("@")[0] not in err
