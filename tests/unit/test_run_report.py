"""The terminal report of a deploy run (`deploy`, `make demo`): the approval in the decision's words."""
from __future__ import annotations

from schema_deploy.pipeline.report import render


def approval_lines(approval: dict | None) -> list[str]:
    lines = render("deploy", {"approval": approval}, {"approval": "success"}, {})
    at = lines.index("approval")
    return lines[at + 1:at + 2]


def test_a_rejection_reads_rejected_by_whom_and_why_never_approved() -> None:
    (line,) = approval_lines({"approved": False, "approver": "bob", "reason": "not during the sale",
                              "responded_at": "2026-12-06T02:00:00Z", "via": "command line", "triggered_by": "ci"})
    assert line == ("  rejected by bob: not during the sale at 2026-12-06T02:00:00Z via command line "
                    "(run triggered by ci)")
    assert "approved" not in line


def test_a_rejection_without_a_reason_says_so() -> None:
    (line,) = approval_lines({"approved": False, "approver": "bob", "responded_at": "t", "via": "form"})
    assert line.startswith("  rejected by bob: no reason given at t")


def test_an_approval_reads_approved_by_whom() -> None:
    (line,) = approval_lines({"approved": True, "approver": "alice", "responded_at": "t", "via": "form",
                              "triggered_by": "bob"})
    assert line == "  approved by alice at t via form (run triggered by bob)"


def test_an_approval_never_reached_says_so() -> None:
    assert approval_lines(None) == ["  none (not reached)"]
