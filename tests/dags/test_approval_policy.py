"""The approval's record and its policy, on ProductionApprovalOperator.execute_complete.

The full approve/reject paths run end to end in tests/e2e; here the one rule that needs a
particular user: with approver_must_differ, whoever triggered a run cannot approve it.
"""
from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from schema_deploy.pipeline.errors import ApproverRefused
from schema_deploy_airflow.operators import ProductionApprovalOperator


class RecordingTI:
    def __init__(self) -> None:
        self.pushed: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.pushed[key] = value


def decide(monkeypatch, tmp_path, *, must_differ: bool, approver: str, option: str = "Approve"):
    config = tmp_path / "deploy.yaml"
    config.write_text(f"approval: {{manual_runs: required, approver_must_differ: {str(must_differ).lower()}}}\n")
    monkeypatch.setenv("SCHEMA_DEPLOY_CONFIG", str(config))
    monkeypatch.delenv("AIRFLOW_CONN_SLACK_DEPLOYS", raising=False)  # no Slack here: logged, not raised
    # The upstream values are resolved XComArgs in a run; the decision does not read them.
    op = ProductionApprovalOperator(task_id="approve_production", preflight=None, backup=None, gate=None)
    ti = RecordingTI()
    context = {"ti": ti, "dag_run": SimpleNamespace(triggering_user_name="alice")}
    event = {"chosen_options": [option], "params_input": {},
             "responded_at": datetime(2026, 11, 26, 3, 0, tzinfo=timezone.utc),
             "responded_by_user": {"id": approver, "name": approver}}
    return op, context, event, ti


def test_with_approver_must_differ_the_trigger_user_cannot_approve_their_own_run(monkeypatch, tmp_path) -> None:
    op, context, event, ti = decide(monkeypatch, tmp_path, must_differ=True, approver="alice")
    with pytest.raises(ApproverRefused, match="alice approved their own deployment, but deploy.yaml sets "
                                              "approval.approver_must_differ: a second person must approve"):
        op.execute_complete(context, event)
    assert ti.pushed["approval"]["approver"] == "alice" and ti.pushed["approval"]["triggered_by"] == "alice"


def test_a_second_person_may_approve_and_is_recorded_with_the_time(monkeypatch, tmp_path) -> None:
    op, context, event, ti = decide(monkeypatch, tmp_path, must_differ=True, approver="bob")
    record = op.execute_complete(context, event)
    assert record == ti.pushed["approval"] == {
        "type": "Approval", "version": 1, "approved": True, "approver": "bob", "approver_id": "bob",
        "responded_at": "2026-11-26 03:00:00+00:00", "triggered_by": "alice", "via": "airflow", "reason": ""}


def test_without_the_rule_the_trigger_user_may_approve(monkeypatch, tmp_path) -> None:
    op, context, event, _ = decide(monkeypatch, tmp_path, must_differ=False, approver="alice")
    assert op.execute_complete(context, event)["approved"] is True


def test_a_rejection_keeps_the_reason_the_responder_typed_and_the_form_offers_it_as_optional(
        monkeypatch, tmp_path) -> None:
    op, context, event, ti = decide(monkeypatch, tmp_path, must_differ=True, approver="bob", option="Reject")
    assert op.serialized_params["reason"]["schema"]["type"] == ["null", "string"]  # the form submits it empty
    event["params_input"] = {"reason": "  the billing batch runs tonight  "}
    record = op.execute_complete(context, event)
    assert (record["approved"], record["approver"], record["reason"]) == (False, "bob", "the billing batch runs tonight")
    assert ti.pushed["approval"] == record


def test_the_rollback_approval_keeps_a_rejections_answer_though_airflow_pushes_no_return_value(monkeypatch) -> None:
    """On Reject the base class skips downstream by raising (no return value in Airflow 3.3): the answer,
    with who, when and the reason, is kept as the XCom `answer` first."""
    from schema_deploy_airflow.operators import RecordedApprovalOperator

    op = RecordedApprovalOperator(task_id="approve_rollback", plan=None)
    ti = RecordingTI()
    event = {"chosen_options": ["Reject"], "params_input": {"reason": "wrong backup"},
             "responded_at": datetime(2026, 12, 6, 7, 0, tzinfo=timezone.utc),
             "responded_by_user": {"id": "bob", "name": "bob"}}
    monkeypatch.setattr(RecordedApprovalOperator, "skip", lambda self, **kw: (_ for _ in ()).throw(
        RuntimeError("skipped by raising, as the task runner does")))
    op.downstream_task_ids.add("safety_backup")
    with pytest.raises(RuntimeError, match="skipped by raising"):
        op.execute_complete({"ti": ti, "task": op}, event)
    assert ti.pushed["answer"] == {"chosen_options": ["Reject"], "params_input": {"reason": "wrong backup"},
                                   "responded_at": "2026-12-06 07:00:00+00:00",
                                   "responded_by_user": {"id": "bob", "name": "bob"}}
