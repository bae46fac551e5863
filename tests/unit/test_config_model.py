"""deploy.yaml's typed model: every key refuses a value of the wrong type and an unknown sibling, by name.

The cases are generated from the model itself (`config.model.key_paths`), against a file that uses
every key (`EVERY_KEY`), so a key added to the model without a test cannot exist: it gets both here.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from schema_deploy.cli.main import main
from schema_deploy.config.errors import ConfigError
from schema_deploy.config.messages import dotted
from schema_deploy.config.model import DeployYaml, key_paths
from schema_deploy.config.settings import ROOT, load

EVERY_KEY = yaml.safe_load("""
bundles:
  main: sql/migrations
  shared: {path: shared/migrations, allow_symlinks: true}
default_bundle: main
verify_dir: sql/verify
backup: {bucket: b, prefix: p, sse: aws:kms, kms_key_id: k, restore_check: false}
gate: {timeout: 5m, commands: [[python, -m, pytest]]}
approval: {manual_runs: form, scheduled_runs: skip, approver_must_differ: true}
windows:
  - {name: nightly, cron: "0 2 * * *", duration: 2h, timezone: UTC}
window_safety_factor: 1.5
lock: {lock_timeout_ms: 200, max_lock_timeout_ms: 3000, lock_retries: 5}
health: {enabled: true, max_replica_lag_mb: 32, max_wal_mb_per_s: 16, max_transaction_age: 5m, max_lock_waiters: 1,
         poll: 3s, max_wait: 20m}
slack: {channel: "#ops"}
schedule: {lead: 1h}
expectations: {index_storage_mb: [10, 20], query_speedup_percent: [5, 15], measurable_from_rows: 5000}
prisma: {deploys: true, schema: prisma/schema.prisma, cli: tests/prisma}
lint: {severity: {ban-drop-table: warning}}
prechecks: {timeout_ms: 90000}
queues: {staging: stg, production: prd, default: ctl}
fleets:
  named: {prefix: tenant_, window: nightly, queue: fleet, backup: none,
          waves: {canary: 2, size: "10%", parallel: 3, halt_after: 1, pause: 1m, approve_after_canary: true}}
  inline: {targets: [a, b], window: {cron: "0 3 * * *", duration: 1h, timezone: UTC, name: three}}
  regions:
    catalog: {conn: cat, query: "select conn_id, region from tenants"}
    window:
      by: region
      windows: {eu: nightly, us: {cron: "0 9 * * *", duration: 1h, timezone: America/New_York, name: us}}
      default: {cron: "0 4 * * *", duration: 1h, timezone: UTC, name: four}
demo: {anything: [goes, here]}
""")
OLD_FORM = {"migrations": "sql/migrations"}  # the single-bundle form: it cannot stand beside `bundles`
WRONG = [["zz"], "zz", 3, True, 2.5, {"zz": 1}]


def doc_for(key: str) -> dict:
    return OLD_FORM if key == "migrations" else EVERY_KEY


def places(doc: Any, pattern: list[str], prefix: list[str | int] | None = None) -> list[list[str | int]]:
    """The concrete places in `doc` of a key path with `*` for a name or an index of the writer's own."""
    prefix = prefix or []
    if not pattern:
        return [prefix]
    head, rest = pattern[0], pattern[1:]
    if head == "*":
        items = enumerate(doc) if isinstance(doc, list) else doc.items() if isinstance(doc, dict) else []
        return [p for k, v in items for p in places(v, rest, prefix + [k])]
    if isinstance(doc, dict) and head in doc:
        return places(doc[head], rest, prefix + [head])
    return []


def put(doc: Any, where: list[str | int], value: Any) -> Any:
    doc = copy.deepcopy(doc)
    node = doc
    for part in where[:-1]:
        node = node[part]
    node[where[-1]] = value
    return doc


def load_doc(tmp_path: Path, doc: Any) -> Any:
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load(path)


def wrong_value(doc: dict, where: list[str | int]) -> Any:
    """A value the model refuses at `where` (the first of WRONG that it does)."""
    from pydantic import ValidationError

    for value in WRONG:
        try:
            DeployYaml.model_validate(put(doc, where, value))
        except ValidationError:
            return value
    raise AssertionError(f"{dotted(where)} takes anything")


CASES = [(key, where) for key in key_paths() for where in places(doc_for(key), key.split("."))[:1]]


def test_the_file_that_uses_every_key_is_valid_and_every_key_is_in_it(tmp_path: Path) -> None:
    cfg = load_doc(tmp_path, EVERY_KEY)
    assert cfg.lock_retries == 5 and cfg.backup_restore_check is False and cfg.fleet("regions").window.by == "region"
    assert (cfg.health.max_replica_lag_bytes, cfg.health.max_lock_waiters, cfg.health.max_wait_s) == (32 << 20, 1, 1200)
    assert load_doc(tmp_path, OLD_FORM).bundles == (("main", tmp_path / "sql/migrations"),)
    missing = [key for key in key_paths() if not places(doc_for(key), key.split("."))]
    assert missing == [], "keys of the model that the example does not use (so no test covers them)"
    assert len(CASES) == len(key_paths()) >= 75


@pytest.mark.parametrize("key, where", CASES, ids=[k for k, _ in CASES])
def test_a_value_of_the_wrong_type_is_refused_naming_the_key(tmp_path: Path, key: str, where: list) -> None:
    value = wrong_value(doc_for(key), where)
    with pytest.raises(ConfigError) as info:
        load_doc(tmp_path, put(doc_for(key), where, value))
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'deploy.yaml'}: {dotted(where)}"), message
    assert ": expected " in message or " is not a " in message, message
    assert info.value.exit_code == 2


@pytest.mark.parametrize("key, where", CASES, ids=[k for k, _ in CASES])
def test_an_unknown_sibling_is_refused_naming_the_key_it_resembles(tmp_path: Path, key: str, where: list) -> None:
    leaf = str(where[-1])
    with pytest.raises(ConfigError) as info:
        load_doc(tmp_path, put(doc_for(key), where[:-1] + [leaf + "x"], 1))
    assert str(info.value) .startswith(f"{tmp_path / 'deploy.yaml'}: {dotted(where[:-1] + [leaf + 'x'])}: unknown key. "
                                       f"Did you mean {leaf} "), str(info.value)


@pytest.mark.parametrize("text, message", [
    ("backup:\n  restore_check: 'false'\n",
     "backup.restore_check: expected true or false, got the string 'false'. Write true or false, unquoted."),
    ("lock:\n  lock_timeout_ms: fast\n",
     "lock.lock_timeout_ms: expected a whole number, got the string 'fast'. Write a whole number, unquoted."),
    ("window_safety_factor: two\n", "window_safety_factor: expected a number, got the string 'two'. Write a number, "
                                    "unquoted."),
    ("lock_retries: 3\n", "lock_retries: unknown key. Did you mean lock.lock_retries (in section lock)? Move it there."),
    ("slack:\n  chanel: '#x'\n", "slack.chanel: unknown key. Did you mean channel (in slack)? Keys there: channel."),
])
def test_the_issues_cases_read_as_the_project_words_them(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == f"{path}: {message}"


def test_config_check_prints_the_settings_in_effect_and_exits_0_on_the_shipped_file(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["config", "check", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["lock_retries"] == 10 and out["windows"][0]["name"] == "nightly" and out["default_bundle"] == "main"


@pytest.mark.parametrize("text, problem", [
    ("lock:\n  lock_retriess: 3\n", "lock.lock_retriess: unknown key. Did you mean lock_retries (in lock)?"),
    ("backup:\n  restore_check: 'false'\n", "backup.restore_check: expected true or false, got the string 'false'"),
])
def test_config_check_exits_2_on_an_unknown_key_or_a_wrong_type(tmp_path: Path, capsys, text: str,
                                                                 problem: str) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text(text)
    assert main(["config", "check", str(path)]) == 2
    assert f"error: {path}: {problem}" in capsys.readouterr().err
