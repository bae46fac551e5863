"""Records inside results: a known shape is a typed record, and the JSON it travels as is unchanged.

The dicts below are the shapes the results travelled as before their fields were typed (as the
audit record, the store's documents, the UI page and stored runs hold them): `to_xcom()` must still
give exactly these, and `from_xcom()` must read them, older empty references included.
"""
from __future__ import annotations

import json

import pytest

from schema_deploy.engine.criteria import MET, NOT_MEASURABLE, Criterion
from schema_deploy.errors import UsageError
from schema_deploy.pipeline.results import (AuditRecord, BackupRef, BackupResult, BundleCheck, ChainRowRef,
                                            GateResult, MemberOutcome, MigrationRef, PreflightResult, ReleaseRef,
                                            RollbackPlan, StagingGate, Verification, plain)

RELEASE = {"type": "ReleaseRef", "version": 1, "uri": "s3://b/releases/" + "a" * 64 + ".json", "sha256": "a" * 64,
           "short": "a" * 12, "bundle": "main",
           "source": {"folder": "/repo/prisma/migrations", "git_commit": "c" * 40, "git_dirty": False},
           "migrations": [{"name": "20250101_init", "checksum": "1" * 64},
                          {"name": "20250102_more", "checksum": "2" * 64}]}
BACKUP = {"uri": "s3://b/production/x.dump", "sha256": "d" * 64, "size": 1234,
          "started_at": "2026-12-06T07:00:00+00:00", "run_id": "manual__1", "row_counts": {"public.User": 10}, "total_rows": 10, "verified": True,
          "source": {"environment": "production", "database": "app"}, "other_source": None}
CRITERIA = [{"name": "no data loss or corruption", "verdict": MET, "detail": "row counts equal"},
            {"name": "query performance meets expectations", "verdict": NOT_MEASURABLE, "detail": "too small"}]


def preflight_xcom() -> dict:
    return {"type": "PreflightResult", "version": 1, "release": RELEASE,
            "migrations": [{"name": "20250102_more", "checksum": "2" * 64, "steps": []}], "online": True,
            "pending": {"staging": ["20250102_more"]}, "lint": {"errors": 0}, "prechecks": [],
            "table_sizes": {}, "production_table_bytes": 0, "run": {"run_id": "r"}, "slack_ts": None}


def verification_xcom() -> dict:
    return {"type": "Verification", "version": 2, "env": "production", "checks": 3, "failed": 0,
            "rows_before": {"User": 10}, "rows_after": {"User": 10}, "index_bytes": {}, "query_ms_before": {},
            "query_ms_after": {}, "facts": [], "criteria": CRITERIA, "verdict": "1/2 success criteria met",
            "not_measurable": 0}


def rollback_plan_xcom(**more) -> dict:
    return {"type": "RollbackPlan", "version": 1, "environment": "production", "database": "app",
            "method": "backup", "needs_approval": True, "backup": BACKUP, "migrations": [], "release": None,
            "confirmed": "app", "force": False, "approval_body": "", "run": {}, "slack_ts": None, **more}


def member_xcom(**more) -> dict:
    return {"type": "MemberOutcome", "version": 1, "member": "tenant_01", "state": "done", "wave": 0,
            "attributes": {}, "tries": 1, "started": "", "ended": "", "seconds": 0.0, "apply_started": "",
            "apply_ended": "", "apply_s": 0.0, "verify_s": 0.0, "pending": [], "migrations": [], "backfills": [], "backup": "",
            "audit": {"id": 7, "row_hash": "e" * 64}, "error": "", "detail": "", "reason": "", "next_window": "",
            **more}


@pytest.mark.parametrize("cls, data", [
    (PreflightResult, preflight_xcom()),
    (BundleCheck, {"type": "BundleCheck", "version": 1, "release": RELEASE, "lint": {"errors": 0}, "given": False}),
    (Verification, verification_xcom()),
    (RollbackPlan, rollback_plan_xcom()),
    (RollbackPlan, rollback_plan_xcom(method="down_migrations", backup=None, release=RELEASE)),
    (MemberOutcome, member_xcom()),
    (MemberOutcome, member_xcom(state="not_attempted", audit={})),
    (AuditRecord, {"type": "AuditRecord", "version": 1, "outcome": "production migrated", "s3": "s3://b/k",
                   "sha256": "f" * 64, "chain": {"staging": {"id": 1, "row_hash": "9" * 64}}, "release": ""}),
], ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_a_result_reads_its_records_and_travels_as_exactly_the_same_json(cls, data) -> None:
    result = cls.from_xcom(json.loads(json.dumps(data)))
    assert json.dumps(result.to_xcom()) == json.dumps(data)  # the same keys, values and order
    assert cls.from_xcom(result.to_xcom()) == result


def test_the_records_are_typed_values_after_from_xcom() -> None:
    pre = PreflightResult.from_xcom(preflight_xcom())
    assert isinstance(pre.release, ReleaseRef) and pre.release_uri == RELEASE["uri"]
    assert pre.release.migrations[1] == MigrationRef("20250102_more", "2" * 64)
    assert pre.release.names == ["20250101_init", "20250102_more"] and pre.release.source["git_dirty"] is False
    verified = Verification.from_xcom(verification_xcom())
    assert verified.criteria[0] == Criterion("no data loss or corruption", MET, "row counts equal")
    assert verified.verdicts.having(NOT_MEASURABLE)[0].detail == "too small"
    plan = RollbackPlan.from_xcom(rollback_plan_xcom())
    assert plan.restoring == BackupRef(**BACKUP) and plan.backup.row_counts == {"public.User": 10}
    assert MemberOutcome.from_xcom(member_xcom()).audit == ChainRowRef(7, "e" * 64)


def test_an_absent_reference_is_none_and_travels_as_it_always_has() -> None:
    waiting = MemberOutcome.from_xcom(member_xcom(state="not_attempted", audit={}))
    assert waiting.audit is None and waiting.to_xcom()["audit"] == {}
    assert MemberOutcome(member="m", state="failed").to_xcom()["audit"] == {}
    assert RollbackPlan.from_xcom(rollback_plan_xcom(backup=None)).to_xcom()["backup"] is None


def test_a_dict_given_to_the_constructor_becomes_its_record() -> None:
    """The steps may build a result from the dicts they hold; the result holds records."""
    outcome = MemberOutcome(member="m", state="done", audit={"id": 3, "row_hash": "h"})
    assert outcome.audit == ChainRowRef(3, "h")
    pre = PreflightResult.from_xcom({**preflight_xcom(), "release": {k: v for k, v in RELEASE.items()
                                                                    if k not in ("type", "version")}})
    assert pre.release == ReleaseRef.from_xcom(RELEASE)  # a release reference without its tag is read too


def test_report_code_reads_a_result_and_its_xcom_alike() -> None:
    pre = PreflightResult.from_xcom(preflight_xcom())
    for either in (pre, pre.to_xcom()):
        release = either.get("release") or {}
        assert release.get("short") == "a" * 12 and (release.get("source") or {}).get("git_commit") == "c" * 40
    plan = RollbackPlan.from_xcom(rollback_plan_xcom())
    assert plan.get("backup").get("uri") == BACKUP["uri"] and plan.backup.get("missing", "-") == "-"


def test_plain_gives_a_record_as_the_dict_of_its_fields_without_a_tag() -> None:
    assert plain(BackupRef(**BACKUP)) == BACKUP
    assert plain([Criterion("n", MET, "d")]) == [{"name": "n", "verdict": MET, "detail": "d"}]
    assert plain({"staging": ChainRowRef(1, "x")}) == {"staging": {"id": 1, "row_hash": "x"}}


def test_a_record_missing_a_field_is_refused_as_another_versions_shape() -> None:
    broken = {**preflight_xcom(), "release": {k: v for k, v in RELEASE.items() if k != "sha256"}}
    with pytest.raises(UsageError, match=r"^ReleaseRef from the earlier step cannot be read \(.*sha256.*\): run "
                                         "every worker on the same schema_deploy version"):
        PreflightResult.from_xcom(broken)
    with pytest.raises(UsageError, match=r"^MemberOutcome from the earlier step cannot be read \(.*row_hash"):
        MemberOutcome.from_xcom(member_xcom(audit={"id": 1}))


def test_a_backup_rollback_without_its_backup_says_to_clear_the_run() -> None:
    plan = RollbackPlan.from_xcom(rollback_plan_xcom(backup=None))
    with pytest.raises(UsageError, match=r"^the backup rollback of production has no backup to restore: only the "
                                         r"backup path chooses one\. Clear the run from preflight\.$"):
        plan.restoring


def staging_gate() -> StagingGate:
    return StagingGate(gate=GateResult(commands=[{"command": "pytest", "exit_code": 0, "seconds": 1.0}],
                                       junit=[], tests=3),
                       verification=Verification.from_xcom(verification_xcom()), outcome="tests passed")


def test_a_staging_gate_holds_its_two_results_and_travels_with_their_tags_as_before() -> None:
    gate = staging_gate()
    data = json.loads(json.dumps(gate.to_xcom()))
    assert data["gate"]["type"] == "GateResult" and data["verification"] == verification_xcom()
    assert StagingGate.from_xcom(data) == gate and isinstance(StagingGate.from_xcom(data).verification, Verification)


def test_the_approval_page_and_the_dry_run_message_read_the_results_or_their_xcoms_alike() -> None:
    from schema_deploy.pipeline.deploy import dry_run_facts
    from schema_deploy.pipeline.record import approval_body, approval_request

    pre, gate = PreflightResult.from_xcom(preflight_xcom()), staging_gate()
    saved = BackupResult(uri="s3://b/x.dump", sha256="d" * 64, size=1, rows=2, verified="sha256+toc")
    assert approval_body(pre, saved, gate) == approval_body(pre.to_xcom(), saved.to_xcom(), gate.to_xcom())
    subject, body, facts = approval_request(pre, saved, gate)
    assert subject == "Apply 20250102_more (release aaaaaaaaaaaa) to production?" and facts["backup"] == saved.uri
    assert "**tests passed**: 1/1 commands passed, 3 tests" in body and "NOT MEASURABLE" in body
    assert dry_run_facts(gate) == dry_run_facts(gate.to_xcom())


def test_a_result_whose_hint_names_a_type_checking_only_import_still_builds() -> None:
    from dataclasses import dataclass

    from schema_deploy.pipeline.results import Result

    @dataclass(frozen=True)
    class Later(Result):
        ref: ChainRowRef | None = None
        other: NotImportedHere | None = None  # noqa: F821 - as under `if TYPE_CHECKING:`

    assert Later(ref={"id": 1, "row_hash": "h"}).ref == ChainRowRef(1, "h")
