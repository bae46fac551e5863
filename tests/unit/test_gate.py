"""The staging test gate: JUnit parsing, running the configured commands, and its failure message.

The JUnit reports come from really running pytest (and from a hand-written report
in another runner's layout); the commands are real subprocesses.
"""
from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from schema_deploy.ops.errors import GateFailed
from schema_deploy.ops.gate import CommandResult, JUnitSummary, parse_junit, run_commands

SAMPLE_TESTS = '''
import pytest


@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")


def test_passes():
    assert True


def test_fails():
    assert 1 == 2


def test_errors(broken):
    pass


@pytest.mark.skip(reason="not today")
def test_skipped():
    pass
'''

OTHER_RUNNER = '''<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="5" failures="1" errors="1">
  <testsuite name="orders" tests="3">
    <testcase classname="app.orders.test_totals" name="sums lines" file="spec/orders/totals.spec.ts"/>
    <testcase classname="app.orders.test_totals" name="rounds half up" file="spec/orders/totals.spec.ts">
      <failure message="expected 3 got 2">AssertionError</failure>
    </testcase>
    <testcase classname="app.orders.test_totals" name="pending">
      <skipped/>
    </testcase>
  </testsuite>
  <testsuite name="users" tests="2">
    <testcase classname="app.users.test_login" name="logs in"/>
    <testcase classname="app.users.test_login" name="locks after 5 tries">
      <error message="connection refused">ConnectionError</error>
    </testcase>
  </testsuite>
</testsuites>
'''


def run(commands: list[tuple[str, ...]], tmp_path: Path, *, timeout_s: float = 60,
        database_url: str = "postgresql://gate:pw@localhost:5432/staging") -> list[CommandResult]:
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    return run_commands(commands, database_url=database_url, cwd=tmp_path, timeout_s=timeout_s, workdir=workdir,
                        log=lambda line: None)


def py(code: str) -> tuple[str, ...]:
    return ("python", "-c", code)


@pytest.fixture
def sample_tests(tmp_path: Path) -> Path:
    path = tmp_path / "test_sample.py"
    path.write_text(SAMPLE_TESTS)
    return path


# --- parse_junit ---------------------------------------------------------------------------

def test_pytest_junit_report_counts_every_outcome_and_names_the_failing_and_erroring_tests(
        tmp_path: Path, sample_tests: Path) -> None:
    report = tmp_path / "report.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", str(sample_tests), "-q", "-p", "no:cacheprovider",
                           f"--junitxml={report}"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr

    summary = parse_junit(report)

    assert (summary.tests, summary.failures, summary.errors, summary.skipped) == (4, 1, 1, 1)
    assert summary.failed == ["test_sample.py::test_fails", "test_sample.py::test_errors"]


def test_testsuites_report_from_another_runner_uses_the_file_attribute_or_else_the_classname(tmp_path: Path) -> None:
    report = tmp_path / "other.xml"
    report.write_text(OTHER_RUNNER)

    summary = parse_junit(report)

    assert summary == JUnitSummary(tests=5, failures=1, errors=1, skipped=1, failed=[
        "spec/orders/totals.spec.ts::rounds half up",
        "app/users/test_login.py::locks after 5 tries",
    ])


def test_a_bare_testsuite_root_is_read_as_one_suite(tmp_path: Path) -> None:
    report = tmp_path / "suite.xml"
    report.write_text('<testsuite name="x"><testcase classname="t" name="a"/>'
                      '<testcase classname="t" name="b"><failure/></testcase></testsuite>')

    summary = parse_junit(report)

    assert (summary.tests, summary.failures, summary.failed) == (2, 1, ["t.py::b"])


# --- run_commands --------------------------------------------------------------------------

@pytest.mark.parametrize("program", ["python", "python3"])
def test_python_as_the_program_means_this_interpreter_not_the_one_on_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, program: str) -> None:
    impostors = tmp_path / "bin"
    impostors.mkdir()
    for name in ("python", "python3"):
        fake = impostors / name
        fake.write_text("#!/bin/sh\necho impostor\n")
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{impostors}:/usr/bin:/bin")

    [result] = run([(program, "-c", "import sys; print(sys.executable)")], tmp_path)

    assert result.ok and result.output_tail.strip() == sys.executable


def test_junit_placeholder_becomes_a_report_path_that_is_parsed(tmp_path: Path, sample_tests: Path) -> None:
    [result] = run([("python", "-m", "pytest", sample_tests.name, "-q", "-p", "no:cacheprovider",
                     "--junitxml={junit}")], tmp_path)

    assert result.exit_code == 1
    assert result.junit_path is not None and Path(result.junit_path).is_file()
    assert Path(result.junit_path).parent == tmp_path / "work"
    assert result.junit is not None and result.junit.tests == 4
    assert result.junit.failed == ["test_sample.py::test_fails", "test_sample.py::test_errors"]
    assert result.as_dict()["junit"]["failures"] == 1


def test_a_command_without_the_placeholder_has_no_junit_report(tmp_path: Path) -> None:
    [result] = run([py("print('fine')")], tmp_path)

    assert result.ok and result.junit_path is None and result.junit is None


def test_the_child_gets_the_staging_database_url_and_runs_in_the_given_directory(tmp_path: Path) -> None:
    [result] = run([py("import os; print(os.environ['DATABASE_URL']); print(os.getcwd())")], tmp_path,
                   database_url="postgresql://gate@db.staging:5432/app")

    assert result.output_tail.split() == ["postgresql://gate@db.staging:5432/app", str(tmp_path)]


def test_a_failing_command_keeps_its_exit_code_and_the_tail_of_its_output(tmp_path: Path) -> None:
    code = ("import sys\nfor i in range(2000): print(f'line {i}')\n"
            "print('boom on stderr', file=sys.stderr)\nsys.exit(3)")
    [result] = run([py(code)], tmp_path)

    assert not result.ok and result.exit_code == 3
    assert len(result.output_tail) == 3000
    assert "line 1999" in result.output_tail and "boom on stderr" in result.output_tail
    assert "line 0\n" not in result.output_tail


def test_a_command_past_the_timeout_exits_minus_one_naming_gate_timeout(tmp_path: Path) -> None:
    [result] = run([py("import time; print('started', flush=True); time.sleep(30)")], tmp_path, timeout_s=1)

    assert result.exit_code == -1 and not result.ok
    assert "timed out after 1 s (gate.timeout in deploy.yaml)" in result.output_tail
    assert result.seconds < 20


def test_a_missing_program_exits_127_naming_gate_commands(tmp_path: Path) -> None:
    [result] = run([("no-such-gate-program-xyz", "--flag")], tmp_path)

    assert result.exit_code == 127
    assert result.output_tail == ("could not start 'no-such-gate-program-xyz': No such file or directory. "
                                  "Check gate.commands in deploy.yaml.")


def test_every_command_runs_even_after_one_fails(tmp_path: Path) -> None:
    results = run([py("import sys; sys.exit(1)"), ("no-such-gate-program-xyz",), py("print('third ran')")],
                  tmp_path)

    assert [r.exit_code for r in results] == [1, 127, 0]
    assert "third ran" in results[2].output_tail


def test_passwords_in_a_commands_output_are_scrubbed(tmp_path: Path) -> None:
    code = ("import os, sys; print('connecting to postgresql://u:secret@h/db');"
            "print(os.environ['DATABASE_URL'], file=sys.stderr); sys.exit(2)")
    [result] = run([py(code)], tmp_path, database_url="postgresql://gate:hunter2@db:5432/staging")

    assert "secret" not in result.output_tail and "hunter2" not in result.output_tail
    assert "postgresql://u:****@h/db" in result.output_tail
    assert "postgresql://gate:****@db:5432/staging" in result.output_tail


def test_the_log_announces_each_command_and_its_outcome(tmp_path: Path, sample_tests: Path) -> None:
    lines: list[str] = []
    (tmp_path / "work").mkdir()
    run_commands([("python", "-m", "pytest", sample_tests.name, "-q", "-p", "no:cacheprovider", "--junitxml={junit}")],
                 database_url="postgresql://x@h/db", cwd=tmp_path, timeout_s=60, workdir=tmp_path / "work",
                 log=lines.append)

    assert lines[0] == ("gate command 1/1: python -m pytest test_sample.py -q -p no:cacheprovider "
                        "--junitxml={junit}")
    assert lines[1].startswith("gate command 1 exited 1 after ") and lines[1].endswith("(4 tests, 2 failing)")


# --- GateFailed ----------------------------------------------------------------------------

def test_gate_failed_names_the_failing_tests_and_says_production_was_not_touched() -> None:
    failed = CommandResult(command="python -m pytest tests/gate", exit_code=1, seconds=2.5,
                           output_tail="1 failed, 1 error in 0.1s",
                           junit=JUnitSummary(tests=4, failures=1, errors=1,
                                              failed=["tests/gate/test_a.py::test_x", "tests/gate/test_b.py::test_y"]))
    missing = CommandResult(command="npm test", exit_code=127, seconds=0.0,
                            output_tail="could not start 'npm': No such file or directory.")

    error = GateFailed([failed, missing])

    assert error.exit_code == 1 and error.results == [failed, missing]
    assert str(error) == (
        "the staging test gate failed, so production was not touched.\n"
        "`python -m pytest tests/gate` exited 1; failing tests: tests/gate/test_a.py::test_x, "
        "tests/gate/test_b.py::test_y\n1 failed, 1 error in 0.1s\n"
        "`npm test` exited 127\ncould not start 'npm': No such file or directory.\n"
        "Fix the migration or the tests, then run the gate again (in Airflow: clear its task; staging keeps the change).")


def test_gate_failed_scrubs_passwords_from_the_output_it_quotes() -> None:
    leaky = CommandResult(command="python -m pytest", exit_code=1, seconds=1.0,
                          output_tail="E   could not connect to postgresql://app:topsecret@db/staging")

    assert "topsecret" not in str(GateFailed([leaky]))
