"""The deploy and rollback pipelines, without Airflow: one function per step, typed results.

Deploy (`deploy.py`, then `record.py`)::

    preflight (bundle → staging, production → release) → backup → apply(staging) → gate
              → verify(staging) → [approval] → window → apply(production) → verify(production)
              → record (compose → chain into each changed target → keep)

Fleet (`fleet/`): one release to many members, in waves::

    fleet_preflight → per wave: split_by_window → run_wave(deploy_member) → brake → … → fleet_record

Rollback (`rollback.py`)::

    preflight → [approval] → safety_backup → rollback → verify → record

Inputs: a `Deployment` (deploy.yaml's settings, the backup store, the notifier, the
run's facts and choices) and `Target`s (`target.py`); outputs: frozen results with
`to_xcom()` / `from_xcom()` (`results.py`). The Airflow glue in
`schema_deploy_airflow/` and the `deploy` command both call these steps.

Owns: the steps (`deploy`, `fleet/`, `rollback`, `record`, `run`), their inputs and results
(`target`, `results`), the run's report (`report`) and the pipelines' conditions (`errors`:
DeployVerificationFailed, RollbackVerificationFailed, ApproverRefused, …).
May import: every layer up to `ops`. Never a task id or a connection id: those are the glue's.
"""
from schema_deploy.pipeline.results import (ApplyResult, Approval, AuditLink, AuditRecord, BackfillPhase, BackupResult,
                                            BrakeDecision, BundleCheck, GateResult, MemberOutcome, PreflightResult,
                                            ReleaseRef, Result, RollbackPlan, RollbackResult, RollbackVerification,
                                            RunRecord, StagingGate, TargetSurvey, Verification, WindowSlot)
from schema_deploy.pipeline.target import Deployment, RunInfo, RunParams, Store, Target

__all__ = ["Approval", "ApplyResult", "AuditLink", "AuditRecord", "BackfillPhase", "BackupResult", "BrakeDecision",
           "BundleCheck", "Deployment", "GateResult", "MemberOutcome", "PreflightResult", "ReleaseRef", "Result",
           "RollbackPlan", "RollbackResult", "RollbackVerification", "RunInfo", "RunParams", "RunRecord", "StagingGate", "Store",
           "Target", "TargetSurvey", "Verification", "WindowSlot"]
