"""deploy.yaml's `queues:`: which Celery queue serves each environment's tasks."""
from __future__ import annotations

from pathlib import Path

import pytest

from schema_deploy.config.errors import ConfigError
from schema_deploy.config.settings import DEFAULT_QUEUE, load


def load_text(tmp_path: Path, text: str):
    path = tmp_path / "deploy.yaml"
    path.write_text(text)
    return load(path)


def test_without_queues_every_task_runs_on_the_default_queue(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "slack: {channel: '#x'}\n")

    assert [cfg.queue(env) for env in ("staging", "production", None)] == [DEFAULT_QUEUE] * 3 == ["default"] * 3


def test_each_environment_gets_its_queue_and_unnamed_ones_fall_back_to_default(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "queues: {staging: stg, production: prod-eu-1}\n")
    assert (cfg.queue("staging"), cfg.queue("production"), cfg.queue(None)) == ("stg", "prod-eu-1", "default")

    cfg = load_text(tmp_path, "queues: {production: prod, default: control}\n")
    assert (cfg.queue("staging"), cfg.queue("production"), cfg.queue(None)) == ("control", "prod", "control")


@pytest.mark.parametrize(("text", "message"), [
    ("queues: {stagin: x}\n",
     "queues.stagin: unknown key. Did you mean staging (in queues)? Keys there: default, production, staging."),
    ("queues: {production: 'prod queue'}\n",
     "queues.production: the string 'prod queue' is not a valid queue name. Give a queue name: letters, digits, '_', "
     "'-', '.' or ':' (what the worker's --queues takes)."),
    ("queues: {staging: 3}\n", "queues.staging: expected text, got the number 3"),
    ("queues: [staging]\n", "queues: expected a mapping (keys indented under it), got a list"),
])
def test_a_bad_queues_section_is_refused_naming_the_key_and_the_fix(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_text(tmp_path, text)
    assert str(err.value).startswith(f"{tmp_path / 'deploy.yaml'}: ") and message in str(err.value)
