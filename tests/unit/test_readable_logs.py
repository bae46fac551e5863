"""Logs a person reads: statements on one line without secrets, locks in words, failures wrapped and
first, values as sentences (never a dataclass repr), one failure message per run naming the DAG, and
messages that point to the Schema deployments page where it shows the answer."""
from __future__ import annotations

import logging

import pytest

from schema_deploy.engine.apply import locks_phrase, statement_line
from schema_deploy.errors import PAGE, UsageError, wrapped
from schema_deploy.pipeline import WindowSlot


# --- one step, one line ---------------------------------------------------------------------

@pytest.mark.parametrize("sql, expected", [
    ('ALTER TABLE "t"\n    ADD COLUMN "c" JSONB;', 'ALTER TABLE "t" ADD COLUMN "c" JSONB;'),
    ("-- why\n\n  CREATE INDEX CONCURRENTLY i ON t (a)", "CREATE INDEX CONCURRENTLY i ON t (a)"),
    ("ALTER ROLE reporter PASSWORD 'hunter22' VALID UNTIL 'infinity'",
     "ALTER ROLE reporter PASSWORD '****' VALID UNTIL 'infinity'"),
    ("CREATE USER u WITH LOGIN password E'it''s secret'", "CREATE USER u WITH LOGIN password '****'"),
    ("SELECT dblink_connect('postgresql://app:hunter22@db/x')", "SELECT dblink_connect('postgresql://app:****@db/x')"),
    ("SELECT '" + "x" * 100 + "'", "SELECT '" + "x" * 71 + "…"),
], ids=["lines-joined", "comment-skipped", "role-password", "escaped-password", "url-password", "cut"])
def test_a_statement_is_shown_on_one_line_without_its_secrets(sql: str, expected: str) -> None:
    assert statement_line(sql) == expected
    assert len(statement_line(sql)) <= 80


def test_locks_are_said_strongest_first_with_their_tables() -> None:
    assert locks_phrase({"b": "SHARE", "a": "ACCESS EXCLUSIVE", "c": "SHARE"}) == (
        "ACCESS EXCLUSIVE on a; SHARE on b, c")
    assert locks_phrase({}) == "no lock on existing tables"


# --- a failure: its message first and wrapped ------------------------------------------------

MESSAGE = ("skip_window is on but skip_window_reason is empty: say why production may change outside the "
           "maintenance window (it is recorded), or turn skip_window off.")


def test_wrapped_leaves_room_on_the_first_line_for_what_is_printed_before_it() -> None:
    text = wrapped("word " * 30, width=40, first_offset=30)
    assert len(text.splitlines()[0]) <= 10 and all(len(line) <= 40 for line in text.splitlines())


def test_wrapped_keeps_lines_within_100_columns_and_long_words_whole() -> None:
    uri = "s3://schema-deploy-backups/" + "x" * 120 + ".dump"
    text = wrapped(f"{MESSAGE} Backup: {uri}\n  - a listed item that stays an item of its own")
    lines = text.splitlines()
    assert all(len(line) <= 100 for line in lines if uri not in line) and uri in lines[-2].strip()
    assert lines[0].startswith("skip_window is on") and lines[1].startswith("    maintenance window")
    assert lines[-1] == "  - a listed item that stays an item of its own"  # its own line, its own indent
    assert " ".join(text.split()) == " ".join(f"{MESSAGE} Backup: {uri} - a listed item that stays an item "
                                              "of its own".split())


class Kept(logging.Handler):
    """The records of the `schema_deploy` logger (the task log's), kept for the test to read."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)


@pytest.fixture
def task_log():
    logger, kept = logging.getLogger("schema_deploy"), Kept()
    level, logger.level = logger.level, logging.DEBUG
    logger.addHandler(kept)
    yield kept
    logger.removeHandler(kept)
    logger.setLevel(level)


def test_fail_fast_logs_the_wrapped_message_as_an_error_block_then_fails_without_retry(task_log) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from schema_deploy_airflow.steps import TRACE_PREFIX, fail_fast

    @fail_fast
    def preflight_bundle() -> None:
        raise UsageError(MESSAGE)

    with pytest.raises(AirflowFailException) as raised:
        preflight_bundle()
    (record,) = task_log.records
    assert record.levelno == logging.ERROR and record.getMessage() == (
        "preflight_bundle failed (not retried: it would fail the same way):\n"
        "  UsageError: skip_window is on but skip_window_reason is empty: say why production may change\n"
        "      outside the maintenance window (it is recorded), or turn skip_window off.\n")
    # The exception, the last thing of Airflow's trace, is the same message wrapped, not one long line;
    # its first line leaves room for what the trace prints before it.
    assert TRACE_PREFIX + str(raised.value) == (
        "airflow.sdk.exceptions.AirflowFailException: UsageError: skip_window is on but skip_window_reason is\n"
        "    empty: say why production may change outside the maintenance window (it is recorded), or turn\n"
        "    skip_window off.")
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert raised.value.unwrapped == f"UsageError: {MESSAGE}"  # what Slack says (callbacks.failure_facts)


# --- values as sentences -------------------------------------------------------------------

def test_a_window_slot_reads_as_a_sentence_not_a_repr() -> None:
    slot = WindowSlot(skipped=False, window="nightly", opens="2026-12-06T02:00:00+01:00",
                      closes="2026-12-06T03:00:00+01:00", needed="0:01:30", staging_seconds=12.34, waited_s=205.2)
    assert slot.describe() == ("maintenance window nightly is open from 2026-12-06 01:00 UTC until 2026-12-06 "
                               "02:00 UTC; the change needs about 1 min 30 s (staging took 12.3 s, scaled to "
                               "production's size); waited 3 min 25 s for it")
    assert "%s" % slot == slot.describe() and "WindowSlot(" not in f"{slot}"
    assert str(WindowSlot(skipped=True, reason="hotfix for INC-12")) == (
        "the maintenance window was skipped: hotfix for INC-12")
    assert WindowSlot(skipped=False, window="w", opens="x", closes="y", needed="2:00:00",
                      waited_s=0).describe() == ("maintenance window w is open from x until y; the change needs "
                                                 "about 2 h; no wait")


# --- one failure message per failed run, naming the DAG ---------------------------------------

class FakeTi:
    """A task instance as the on_failure_callback gets it; its run's task states as the API answers."""

    def __init__(self, task_id: str, states: dict[str, str] | Exception, dag_id: str = "deploy_fleet") -> None:
        self.task_id, self.dag_id, self.run_id, self.try_number = task_id, dag_id, "manual__1", 1
        self.log_url = f"http://airflow/dags/{dag_id}/runs/manual__1/tasks/{task_id}"
        self.states, self.xcoms = states, {}

    def xcom_pull(self, task_ids: str, key: str = "return_value"):
        return self.xcoms.get(task_ids)

    def get_task_states(self, dag_id: str, run_ids: list[str]) -> dict:
        if isinstance(self.states, Exception):
            raise self.states
        assert dag_id == self.dag_id and run_ids == [self.run_id]
        return {self.run_id: self.states}


@pytest.fixture
def posted(monkeypatch) -> list[tuple[str, dict, dict | None]]:
    """What the callback hands to Slack (the transport edge), instead of posting it."""
    from schema_deploy_airflow import steps

    class Posted(list):
        threads: list[dict]  # each message's thread and release

    sent = Posted()
    sent.threads = []
    monkeypatch.setattr(steps, "notify", lambda event, facts, log, links=None, **thread:
                        sent.append((event, facts, links)) or sent.threads.append(thread))
    return sent


def test_the_first_failed_task_of_a_run_posts_one_message_naming_the_dag(posted) -> None:
    from schema_deploy_airflow.callbacks import notify_failure

    error = Exception("UsageError: skip_window is on but skip_window_reason is empty: say why\n    production "
                      "may change")
    error.unwrapped = "UsageError: skip_window is on but skip_window_reason is empty: say why production may change"
    ti = FakeTi("preflight_bundle", {"preflight_bundle": "running", "staging_survey": "upstream_failed",
                                     "windowed": None})
    notify_failure({"ti": ti, "exception": error})
    ((event, facts, links),) = posted
    assert event == "failed" and facts == {"DAG": "deploy_fleet", "task": "preflight_bundle", "try": 1,
                                           "error": "UsageError: skip_window is on but skip_window_reason is "
                                                    "empty: say why production may change"}
    assert links == {"Task log": ti.log_url, "Schema deployments page": "http://airflow/schema-deploy/"}


def test_the_failure_links_point_to_the_pages_own_prefix() -> None:
    from schema_deploy_airflow.callbacks import PAGE_PATH
    from schema_deploy_airflow.ui import URL_PREFIX

    assert PAGE_PATH == URL_PREFIX + "/"


def test_a_later_failure_in_the_same_run_is_logged_not_posted(posted, task_log) -> None:
    from schema_deploy_airflow.callbacks import notify_failure

    # deploy_fleet's `windowed` runs whatever happened (all_done) and fails after preflight failed.
    ti = FakeTi("windowed", {"preflight_bundle": "failed", "waves": "upstream_failed", "windowed": "running"})
    notify_failure({"ti": ti, "exception": Exception("waves did not run")})
    assert posted == []
    assert ("Slack: not posting 'failed' for windowed: this run's failure was already announced when "
            "preflight_bundle failed") in task_log.text


@pytest.mark.parametrize("states, posts", [
    ({"a": "up_for_retry", "b": "running"}, True),  # a try that will be retried is no failure of the run
    ({"a": "upstream_failed", "b": "running"}, True),  # never ran, never posted
    ({"a": "failed", "b": "running"}, False),
    ({"a_0": "failed", "b": "running"}, False),  # a mapped task's failed instance
    ({"b": "failed"}, True),  # its own state (a re-run after a clear) does not count against it
    (RuntimeError("API unreachable"), True),  # cannot tell: post rather than stay silent
], ids=["retrying", "upstream-failed", "failed", "mapped", "itself", "unknown"])
def test_only_an_earlier_failed_task_of_the_run_silences_the_message(posted, states, posts: bool) -> None:
    from schema_deploy_airflow.callbacks import notify_failure

    notify_failure({"ti": FakeTi("b", states), "exception": None})
    assert bool(posted) is posts


def test_rollback_schema_failures_go_through_the_same_rule_with_their_own_title(posted) -> None:
    from schema_deploy_airflow.rollback_steps import notify_failure

    notify_failure({"ti": FakeTi("staging.restore", {"staging.preflight": "failed"}, "rollback_schema"),
                    "exception": None})
    assert posted == []
    notify_failure({"ti": FakeTi("staging.preflight", {"staging.preflight": "running"}, "rollback_schema"),
                    "exception": None})
    ((event, facts, _),) = posted
    assert event == "rollback_failed" and facts["DAG"] == "rollback_schema" and facts["error"] == "see the task log"
    assert posted.threads == [{"thread": None, "release": None}]  # no preflight result: a message of its own


def test_a_failure_after_preflight_is_threaded_under_the_runs_first_message_naming_its_release(posted) -> None:
    """The callback reads the run's preflight result (of the failed task's group) for the thread."""
    from schema_deploy.pipeline import RollbackPlan
    from schema_deploy_airflow.rollback_steps import notify_failure

    ti = FakeTi("production.rollback", {"production.rollback": "running"}, "rollback_schema")
    release = {"uri": "s3://b/r.tar", "sha256": "ab" * 32, "short": "abababab", "bundle": "main"}
    ti.xcoms["production.preflight"] = RollbackPlan(environment="production", database="app", method="backup",
                                                    needs_approval=True, release=release,
                                                    slack_ts="1765000000.000100").to_xcom()
    notify_failure({"ti": ti, "exception": None})
    assert posted.threads[0]["thread"] == "1765000000.000100"
    assert posted.threads[0]["release"] == RollbackPlan.from_xcom(ti.xcoms["production.preflight"]).release


def test_the_failed_message_text_names_the_dag_outside_the_link() -> None:
    from schema_deploy.ops.notify import message
    from schema_deploy_airflow.callbacks import failure_facts

    msg = message("failed", failure_facts(FakeTi("preflight_bundle", {}), Exception("boom")),
                  {"Task log": "http://airflow/x"})
    assert msg["text"].startswith("Schema deployment FAILED — DAG: deploy_fleet; task: preflight_bundle; try: 1")


# --- messages point to the page where it shows the answer ----------------------------------------

@pytest.mark.parametrize("error, page_says, cli", [
    ("BackupNotFound", "The backups are listed on " + PAGE, "`python -m schema_deploy backups list --to "),
    ("NoBackupToRestore", f"({PAGE} lists them, as does this log; or ", "`python -m schema_deploy backups list`"),
    ("AuditProtectionMissing", f"check that nothing was changed: {PAGE} verifies each chain; or ",
     "`python -m schema_deploy audit verify --db URL`"),
    ("LedgerRowMissing", f"Check the ledger before running again: {PAGE} shows it; or ",
     "`python -m schema_deploy status`"),
])
def test_messages_name_the_schema_deployments_page_first_and_the_cli_for_runs_without_airflow(
        error: str, page_says: str, cli: str) -> None:
    from schema_deploy.audit.errors import AuditProtectionMissing
    from schema_deploy.backups.errors import BackupNotFound
    from schema_deploy.pipeline.errors import NoBackupToRestore
    from schema_deploy.state.errors import LedgerRowMissing

    classes = {c.__name__: c for c in (AuditProtectionMissing, BackupNotFound, NoBackupToRestore, LedgerRowMissing)}
    built = {"BackupNotFound": lambda c: c("s3://b/p/x.dump", "the object does not exist"),
             "NoBackupToRestore": lambda c: c("staging", "app", "s3://b/p", 2),
             "AuditProtectionMissing": lambda c: c("staging database app", "is disabled"),
             "LedgerRowMissing": lambda c: c("r1", "public")}[error](classes[error])
    text = str(built)
    assert page_says in text and cli in text and text.index(PAGE) < text.index(cli)
    assert PAGE == "the Schema deployments page (Browse → Schema deployments)"


def test_a_precheck_result_reads_as_a_sentence_not_a_dict() -> None:
    from schema_deploy.bundle.parse import parse_sql
    from schema_deploy.plan.prechecks import PrecheckResult

    (stmt,) = parse_sql('ALTER TABLE "t" ALTER COLUMN "c" SET NOT NULL;', path="m/migration.sql")
    found = PrecheckResult(check="not-null", statement=stmt, table="t", description="rows of t where c IS NULL",
                           violations=0, samples=[], fix="fill c in first.")
    assert found.describe() == "precheck ok: m/migration.sql:1: no rows of t where c IS NULL"
    found.violations, found.samples = 2, ["id=1", "id=7"]
    assert found.describe() == ("precheck failed: m/migration.sql:1: 2 rows of t where c IS NULL (e.g. id=1, id=7); "
                                "fill c in first.")
    found.waived = "backfill runs tonight"
    assert found.describe() == ("precheck waived (backfill runs tonight): m/migration.sql:1: 2 rows of t where c IS "
                                "NULL (e.g. id=1, id=7)")
    found.skipped = "the column is created by the plan"
    assert found.describe() == "precheck skipped: m/migration.sql:1: not-null on t (the column is created by the plan)"
