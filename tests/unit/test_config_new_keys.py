"""deploy.yaml's newer keys: the plan's expectations and how manual runs ask for approval."""
from __future__ import annotations

from pathlib import Path

import pytest

from schema_deploy.config.errors import ConfigError
from schema_deploy.config.settings import ROOT, DeployConfig, load


def load_text(tmp_path: Path, text: str) -> DeployConfig:
    path = tmp_path / "deploy.yaml"
    path.write_text(text)
    return load(path)


def test_expectations_are_read_as_float_ranges(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "expectations:\n  index_storage_mb: [10, 25.5]\n  query_speedup_percent: [5, 15]\n")

    assert cfg.expect_index_mb == (10.0, 25.5) and cfg.expect_speedup_pct == (5.0, 15.0)
    assert all(isinstance(v, float) for v in cfg.expect_index_mb + cfg.expect_speedup_pct)


def test_a_range_may_be_a_single_value(tmp_path: Path) -> None:
    assert load_text(tmp_path, "expectations: {index_storage_mb: [30, 30]}").expect_index_mb == (30.0, 30.0)


def test_the_shipped_deploy_yaml_carries_the_plans_expectations() -> None:
    cfg = load(ROOT / "deploy.yaml")

    assert cfg.expect_index_mb == (50.0, 100.0) and cfg.expect_speedup_pct == (20.0, 40.0)


@pytest.mark.parametrize("text", [
    "slack: {channel: '#deploys'}",
    "expectations:",
    "expectations: {index_storage_mb: null}",
    "approval: {scheduled_runs: skip}",
], ids=["no-sections", "empty-expectations", "null-range", "approval-without-manual-runs"])
def test_absent_keys_take_the_defaults(tmp_path: Path, text: str) -> None:
    cfg = load_text(tmp_path, text)

    assert cfg.expect_index_mb == (50.0, 100.0) and cfg.expect_speedup_pct == (20.0, 40.0)
    assert cfg.approval_manual is True


@pytest.mark.parametrize("key", ["index_storage_mb", "query_speedup_percent"])
@pytest.mark.parametrize("value, problem", [
    ("[40, 20]", "{key} is [40, 20]: low above high. Give [low, high] numbers, e.g. [20, 40]."),
    ("[20]", "{key}: expected [low, high], got a list of 1. Give two numbers, e.g. [20, 40]."),
    ("[10, 20, 30]", "{key}: expected [low, high], got a list of 3. Give two numbers, e.g. [20, 40]."),
    ("30", "{key}: expected a list, got the number 30. Write a list, e.g. [a, b]."),
    ("[low, high]", "{key}[0]: expected a number, got the string 'low'. Write a number, unquoted."),
    ("['20', '40']", "{key}[0]: expected a number, got the string '20'. Write a number, unquoted."),
    ("{low: 20, high: 40}", "{key}: expected a list, got a mapping. Write a list, e.g. [a, b]."),
], ids=["reversed", "one-number", "three-numbers", "scalar", "words", "quoted-numbers", "mapping"])
def test_a_bad_expectation_range_is_rejected_naming_the_key_and_the_valid_form(
        tmp_path: Path, key: str, value: str, problem: str) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text(f"expectations:\n  {key}: {value}\n")

    with pytest.raises(ConfigError) as info:
        load(path)

    assert str(info.value) == f"{path}: " + problem.format(key=f"expectations.{key}")
    assert info.value.exit_code == 2


def test_expectations_that_are_not_a_mapping_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"expectations: expected a mapping \(keys indented under it\), got a list"):
        load_text(tmp_path, "expectations: [50, 100]")


@pytest.mark.parametrize("value, asks", [("required", True), ("form", False)])
def test_manual_runs_required_always_asks_and_form_leaves_it_to_the_trigger_form(
        tmp_path: Path, value: str, asks: bool) -> None:
    cfg = load_text(tmp_path, f"approval: {{manual_runs: {value}}}")

    assert cfg.approval_manual is asks and cfg.approval_scheduled is True


@pytest.mark.parametrize("value, shown", [("sometimes", "the string 'sometimes'"), ("true", "true"),
                                          ("skip", "the string 'skip'")])
def test_a_bad_manual_runs_value_is_rejected_listing_the_valid_ones(tmp_path: Path, value: str, shown: str) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text(f"approval:\n  manual_runs: {value}\n")

    with pytest.raises(ConfigError) as info:
        load(path)

    assert str(info.value) == f"{path}: approval.manual_runs: expected 'required' or 'form', got {shown}. Use one of those."


def test_the_size_from_which_timings_are_judged_is_read_and_defaults_to_100000_rows(tmp_path: Path) -> None:
    assert load_text(tmp_path, "expectations: {measurable_from_rows: 5000}").expect_measurable_rows == 5000
    assert load_text(tmp_path, "expectations:").expect_measurable_rows == 100_000
    assert load(ROOT / "deploy.yaml").expect_measurable_rows == 100_000


@pytest.mark.parametrize("value", ["0", "-5", "many"])
def test_a_measurable_size_that_is_not_a_positive_whole_number_is_rejected_naming_the_key(
        tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"expectations\.measurable_from_rows: expected "):
        load_text(tmp_path, f"expectations: {{measurable_from_rows: {value}}}")
