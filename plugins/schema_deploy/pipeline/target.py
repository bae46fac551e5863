"""The inputs every pipeline step takes: the targets, the backup store, the notifier, the run.

A `Target` is one database the pipeline works on: its name, its role (staging,
production, or a member of a fleet later) and its URL. The orchestrator (the
Airflow glue, the `deploy` CLI, a test) builds targets from wherever it keeps
credentials; the pipeline never looks a connection up itself.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from schema_deploy.config.settings import DeployConfig
from schema_deploy.errors import UsageError

STAGING, PRODUCTION, MEMBER = "staging", "production", "member"
Notifier = Callable[[str, dict[str, object], "dict[str, str] | None"], dict[str, object]]


@dataclass(frozen=True)
class Target:
    name: str
    role: str
    url: str = field(repr=False)

    @property
    def database(self) -> str:
        from schema_deploy.pg.tools import target_of

        return target_of(self.url).dbname


@dataclass(frozen=True)
class Store:
    """Where backups, releases, JUnit reports and audit documents go: s3://BUCKET/PREFIX."""

    s3: Any = field(repr=False)
    root: str
    sse: dict[str, str] = field(default_factory=dict)  # put_object's server-side encryption arguments

    @classmethod
    def from_config(cls, s3: Any, cfg: DeployConfig) -> Store:
        from schema_deploy.backups.store import Sse

        return cls(s3, f"s3://{cfg.backup_bucket}/{cfg.backup_prefix}".rstrip("/"),
                   Sse(cfg.backup_sse, cfg.backup_kms_key_id).put_args())


@dataclass(frozen=True)
class RunParams:
    """The run's choices (the trigger form, or the `deploy` command's flags)."""

    bundle: str = ""
    dry_run: bool = False
    online: bool = True
    require_approval: bool = True
    skip_window: bool = False
    skip_window_reason: str = ""
    lock_retries: int | None = None
    waive_prechecks: str = ""  # the reason to go on although data prechecks fail ("" = they stop the run)
    migrations: str = ""  # the old form field (a folder path): kept only to be refused by check()

    @classmethod
    def from_mapping(cls, params: dict[str, Any]) -> RunParams:
        """From the trigger form (check() refuses what it must; every later step only reads)."""
        retries = params.get("lock_retries")
        try:
            retries = None if retries in (None, "") else int(retries)
        except (TypeError, ValueError):
            raise UsageError(f"lock_retries must be a whole number (got {retries!r}).") from None
        return cls(bundle=str(params.get("bundle") or ""), migrations=str(params.get("migrations") or ""), dry_run=bool(params.get("dry_run", False)),
                   online=bool(params.get("online", True)),
                   require_approval=bool(params.get("require_approval", True)),
                   skip_window=bool(params.get("skip_window", False)),
                   skip_window_reason=str(params.get("skip_window_reason") or ""), lock_retries=retries,
                   waive_prechecks=str(params.get("waive_prechecks") or "").strip())

    def check(self, cfg: DeployConfig, run_type: str = "manual") -> None:
        """Refuse contradictory choices before anything runs; a `migrations` path (the old form
        field) is refused, not obeyed."""
        if self.migrations:
            raise UsageError(f"the run asks for migrations folder {self.migrations!r}, but deployments take a "
                             "declared bundle now: pass 'bundle' with one of deploy.yaml's bundle names.")
        cfg.bundle_path(self.bundle)
        if self.skip_window and not self.skip_window_reason.strip():
            raise UsageError("'Skip the maintenance window' (skip_window) is on but 'Why skip the window' "
                             "(skip_window_reason) is empty: say there why production may change outside the "
                             "maintenance window (it is recorded), or turn skip_window off. Nothing was changed.")
        if self.dry_run and self.skip_window:
            raise UsageError("'Dry run' (dry_run) leaves production untouched, so 'Skip the maintenance window' "
                             "(skip_window) makes no sense with it; turn one of them off. Nothing was changed.")
        if self.lock_retries is not None and self.lock_retries < 0:
            raise UsageError(f"lock_retries must be 0 or more (got {self.lock_retries}).")
        if not run_type.endswith("scheduled") and cfg.approval_manual and not self.require_approval:
            raise UsageError(f"{cfg.source or 'deploy.yaml'}: approval.manual_runs is 'required', so 'Require "
                             "approval' (require_approval) cannot be turned off in the trigger form; leave it on, or "
                             "set approval.manual_runs: form.")

    def approval_required(self, cfg: DeployConfig, run_type: str) -> bool:
        """deploy.yaml's approval policy applied to this run (scheduled runs ignore the form)."""
        if run_type.endswith("scheduled"):
            return cfg.approval_scheduled
        return cfg.approval_manual or self.require_approval


@dataclass(frozen=True)
class RunInfo:
    """Who and what: the run's id, type, who triggered it, and where to see it."""

    run_id: str
    run_type: str = "manual"
    triggered_by: str = "schedule"
    url: str = ""
    started: str = ""

    def facts(self) -> dict[str, str]:
        return {"run_id": self.run_id, "run_type": self.run_type, "triggered_by": self.triggered_by}


def _no_notifier(event: str, facts: dict[str, object], links: dict[str, str] | None = None) -> dict[str, object]:
    return {"event": event, "ok": False, "attempts": 0, "errors": ["no notifier configured"]}


@dataclass(frozen=True)
class Deployment:
    """What every step of one run shares: settings, the store, the notifier, the run, the log."""

    cfg: DeployConfig
    store: Store
    run: RunInfo
    params: RunParams = field(default_factory=RunParams)
    notify: Notifier = _no_notifier
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("schema_deploy"))
    # Releases this Deployment has loaded and proven, by URI: a task (or a `deploy` run) whose steps
    # each need the release reads and checks it once.
    loaded: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # Production's health gate: called with the wait (a HealthGateWaiting) instead of sleeping, when set
    # (Airflow defers the task from it); and what this task's earlier attempts waited already.
    defer: Callable[[Any], None] | None = field(default=None, compare=False, repr=False)
    health_waited_s: float = 0.0
    health_wait_reason: str = ""
    health_wait_what: str = ""  # the step (or backfill) those earlier attempts waited for
