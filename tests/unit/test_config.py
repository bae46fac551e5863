"""deploy.yaml: defaults that work on the local stack, and errors that name the key."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from schema_deploy.config import ROOT, DeployConfig, load
from schema_deploy.errors import ConfigError


def test_the_shipped_deploy_yaml_loads_with_a_nightly_window_and_the_gate_suite() -> None:
    cfg = load(ROOT / "deploy.yaml")
    assert cfg.migrations == ROOT / "sql" / "migrations"
    assert [w.name for w in cfg.windows] == ["nightly"] and cfg.windows[0].duration == timedelta(hours=2)
    assert cfg.gate_commands[0][:4] == ("python", "-m", "pytest", "tests/gate")
    assert cfg.backup_sse == "AES256" and cfg.approval_manual and cfg.approval_scheduled


def test_a_missing_file_means_defaults(tmp_path: Path) -> None:
    assert load(tmp_path / "nope.yaml") == DeployConfig()


@pytest.mark.parametrize("text, message", [
    ("windows: [{cron: '0 2 * * *'}]", r"windows\[0\] needs 'cron' and 'duration'"),
    ("gate: {commands: ['pytest tests/gate']}", r"gate.commands\[0\] must be a list of strings"),
    ("approval: {scheduled_runs: sometimes}", r"approval.scheduled_runs is 'sometimes'.*'required' or 'skip'"),
    ("backup: [1, 2]", r"'backup' must be a mapping"),
    ("windows: [{cron: 'nightly', duration: 1h}]", r"windows\[0\]: .*'nightly' is not a cron expression"),
    ("lock: {lock_timeout_ms: 0}", r"lock.lock_timeout_ms is 0.*wait for locks forever"),
    ("key: [unclosed", r"not valid YAML"),
])
def test_bad_settings_are_rejected_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load(path)
    assert info.value.exit_code == 2 and str(path) in str(info.value)
