"""deploy.yaml: defaults that work on the local stack, and errors that name the key."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from schema_deploy.config.errors import ConfigError
from schema_deploy.config.settings import ROOT, DeployConfig, load


def test_the_shipped_deploy_yaml_loads_with_a_nightly_window_and_the_gate_suite() -> None:
    cfg = load(ROOT / "deploy.yaml")
    assert cfg.migrations == ROOT / "sql" / "migrations"
    assert [w.name for w in cfg.windows] == ["nightly"] and cfg.windows[0].duration == timedelta(hours=2)
    assert cfg.gate_commands[0][:4] == ("python", "-m", "pytest", "tests/gate")
    assert cfg.backup_sse == "AES256" and cfg.approval_manual and cfg.approval_scheduled


def test_a_missing_file_means_defaults(tmp_path: Path) -> None:
    assert load(tmp_path / "nope.yaml") == DeployConfig()


@pytest.mark.parametrize("text, message", [
    ("windows: [{cron: '0 2 * * *'}]", r"windows\[0\]\.duration: missing"),
    ("gate: {commands: ['pytest tests/gate']}", r"gate\.commands\[0\]: expected a list, got the string 'pytest "
                                                r"tests/gate'\. Write a list, e\.g\. \[a, b\]"),
    ("approval: {scheduled_runs: sometimes}", r"approval\.scheduled_runs: expected 'required' or 'skip', got the "
                                              r"string 'sometimes'"),
    ("backup: [1, 2]", r"backup: expected a mapping \(keys indented under it\), got a list"),
    ("windows: [{cron: 'nightly', duration: 1h}]", r"windows\[0\]: .*'nightly' is not a cron expression"),
    ("lock: {lock_timeout_ms: 0}", r"lock\.lock_timeout_ms: expected a number at least 1, got the number 0\. 0 "
                                   r"milliseconds would wait forever"),
    ("key: [unclosed", r"not valid YAML"),
])
def test_bad_settings_are_rejected_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load(path)
    assert info.value.exit_code == 2 and str(path) in str(info.value)


@pytest.mark.parametrize("text, message", [
    ("bundles: {main: sql/migrations}\nmigrations: sql/migrations",
     r"both 'bundles' and 'migrations' are set\. Declare every folder under 'bundles:'"),
    ("bundles: [sql/migrations]", r"bundles: expected a mapping \(keys indented under it\), got a list"),
    ("bundles: {'../up': sql/migrations}", r"bundles\['\.\./up'\]: '\.\./up' is not a bundle name\. Use letters, "
                                           r"digits"),
    ("bundles: {main: ''}", r"bundles\.main: expected text, got an empty string"),
    ("bundles: {main: a, hotfix: b}", r"2 bundles are declared but no default_bundle\. Add default_bundle: one of "
                                      r"main, hotfix"),
    ("bundles: {main: a}\ndefault_bundle: other", r"default_bundle 'other' is not declared under bundles\. Use one of "
                                                  r"main"),
])
def test_bad_bundle_declarations_are_rejected_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message):
        load(path)


def test_bundles_are_read_relative_to_the_file_and_the_old_key_is_bundle_main(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text("bundles: {main: sql/migrations, hotfix: hot}\ndefault_bundle: hotfix\n")
    cfg = load(path)
    assert cfg.bundles == (("main", tmp_path / "sql/migrations"), ("hotfix", tmp_path / "hot"))
    assert cfg.migrations == tmp_path / "hot" and cfg.bundle_path("") == tmp_path / "hot"
    path.write_text("migrations: old/place\n")
    assert load(path).bundles == (("main", tmp_path / "old/place"),)


def test_a_missing_config_given_explicitly_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: not found\. Pass an existing file with --config"):
        load(Path("/nonexistent/nope.yaml"), must_exist=True)


def test_reading_the_shipped_deploy_yaml_does_not_import_the_sql_parser() -> None:
    # The DAG files read deploy.yaml at parse time (form choices, schedule): that must stay cheap.
    import subprocess
    import sys

    code = ("import sys; from schema_deploy.config import settings; settings.load(sys.argv[1]); "
            "print(sorted(m for m in ('pglast', 'psycopg', 'schema_deploy.lint') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, str(ROOT / "deploy.yaml")], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT / "plugins")}, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
