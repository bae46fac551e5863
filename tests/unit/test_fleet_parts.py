"""The fleet run apart (deploy_fleet's tasks): the values its steps hand each other, how they are
joined again, and how each step ends (the verdicts and the messages the glue raises)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from schema_deploy.config.fleets import FleetSpec, Share, WavesSpec
from schema_deploy.config.settings import DeployConfig
from schema_deploy.errors import UsageError
from schema_deploy.pipeline import Deployment, RunInfo, RunParams, Store, fleet
from schema_deploy.pipeline.fleet.members import Member
from schema_deploy.pipeline.fleet.parts import FleetMember, FleetMembers, FleetPart, WindowProgress
from schema_deploy.pipeline.fleet.verdicts import Verdict
from schema_deploy.pipeline.fleet.waves import next_wave, wave_facts
from schema_deploy.pipeline.results import BrakeDecision, MemberOutcome

SPEC = FleetSpec("tenants", "prefix", prefix="tenant_", waves=WavesSpec(canary=1, size=Share(2)))
TASKS = {"canary": "canary", "approval": "approve_canary", "waves": "waves"}  # as deploy_fleet names them


def outcome(name: str, state: str, error: str = "", wave: int = 0, **more) -> MemberOutcome:
    return MemberOutcome(member=name, state=state, error=error, wave=wave, **more)


def decision(halt: bool, reason: str = "r", wave: int = 0) -> BrakeDecision:
    return BrakeDecision(wave=wave, halt=halt, failed=int(halt), done=0, already=0, limit=0, reason=reason)


def members(*names: str) -> list[Member]:
    return [Member(n, "member", f"postgresql://u:pw@h/{n}") for n in names]


def frozen(*waves: list[str]) -> FleetMembers:
    return FleetMembers(fleet="tenants", members=[FleetMember(n, {"region": "eu"}) for w in waves for n in w],
                        waves=[list(w) for w in waves])


def ctx(notified: list | None = None, **params) -> Deployment:
    def notify(event, facts, links=None):
        (notified if notified is not None else []).append((event, facts))
        return {"ok": True}

    return Deployment(cfg=DeployConfig(source=Path("deploy.yaml")), store=Store(None, "s3://b/p"),
                      run=RunInfo(run_id="r1"), params=RunParams(**params), notify=notify)


# --- the values between the steps ------------------------------------------------------------------

def test_the_frozen_members_travel_as_names_attributes_and_the_wave_plan_and_come_back_typed() -> None:
    value = FleetMembers.of("tenants", [Member("b", "member", "postgresql://u:secret@h/b", (("region", "us"),)),
                                        *members("a")], [[members("b")[0]], members("a")])
    data = value.to_xcom()
    assert {k: data[k] for k in ("fleet", "members", "waves")} == {
        "fleet": "tenants", "members": [{"name": "b", "attributes": {"region": "us"}}, {"name": "a", "attributes": {}}],
        "waves": [["b"], ["a"]]}
    assert "secret" not in str(data) and "postgresql://" not in str(data)
    back = FleetMembers.from_xcom(data)
    assert back == value and isinstance(back.members[0], FleetMember) and back.names == ["b", "a"]


def test_a_part_travels_as_outcomes_and_brakes_and_comes_back_as_typed_outcomes_and_decisions() -> None:
    part = FleetPart(outcomes=[outcome("a", "failed", "boom"), outcome("b", "done")], brakes=[decision(True)])
    data = part.to_xcom()
    assert [o["member"] for o in data["outcomes"]] == ["a", "b"] and data["brakes"][0]["halt"] is True
    back = FleetPart.from_xcom(data)
    assert back == part and isinstance(back.outcomes[0], MemberOutcome) and isinstance(back.brakes[0], BrakeDecision)
    assert [o.member for o in back.failed] == ["a"] and back.halted
    assert FleetPart().failed == [] and not FleetPart().halted


def test_the_window_progress_comes_back_whole_and_its_part_is_the_done_then_the_waiting() -> None:
    progress = WindowProgress(prior=[outcome("a", "done")], done=[outcome("b", "done")],
                              waiting=[outcome("c", "waiting_window")], brakes=[decision(False)], waves_failed=True)
    assert WindowProgress.from_xcom(progress.to_xcom()) == progress
    assert progress.part == FleetPart(outcomes=[outcome("b", "done"), outcome("c", "waiting_window")],
                                      brakes=[decision(False)])


def test_a_part_read_as_another_type_is_refused_naming_both() -> None:
    with pytest.raises(UsageError, match=r"^expected a FleetPart from the earlier step, got 'FleetMembers'"):
        FleetPart.from_xcom(frozen(["a"]).to_xcom())


# --- who the members are ----------------------------------------------------------------------------

def test_only_targets_naming_a_member_the_fleet_lacks_is_refused_with_its_members() -> None:
    both = members("tenant_a", "tenant_b")
    assert [m.name for m in fleet.chosen(SPEC, both, ["tenant_b"])] == ["tenant_b"]
    assert fleet.chosen(SPEC, both, []) == both
    with pytest.raises(UsageError, match=r"^only_targets names tenant_x, which fleet tenants does not have; its "
                                         r"members: tenant_a, tenant_b.$"):
        fleet.chosen(SPEC, both, ["tenant_b", "tenant_x"])


def test_the_frozen_members_are_found_again_in_their_order_and_one_gone_is_refused_naming_the_fix() -> None:
    assert [m.name for m in fleet.refound(frozen(["b"], ["a"]), members("a", "b", "c"))] == ["b", "a"]
    with pytest.raises(UsageError, match=r"^fleet tenants: b, c no longer defined on this worker \(connection or "
                                         r"catalog row gone since fleet_members\); restore them, or run again with "
                                         r"only_targets.$"):
        fleet.refound(frozen(["a"], ["b", "c"]), members("a"))


def test_freezing_the_members_puts_a_canary_first_and_plans_the_waves() -> None:
    value = fleet.freeze_members(ctx(), SPEC, members("a", "b", "c", "d"), ["a", "c", "d"])
    assert value.fleet == "tenants" and value.names == ["a", "c", "d"] and value.waves == [["a"], ["c", "d"]]


@pytest.mark.parametrize(("approve", "waves", "dry_run", "asks"), [
    (True, [["a"], ["b"]], False, True), (True, [["a"]], False, False), (True, [["a"], ["b"]], True, False),
    (False, [["a"], ["b"]], False, False)])
def test_the_approval_after_the_canary_is_asked_only_when_waves_follow_and_members_change(approve, waves, dry_run,
                                                                                           asks) -> None:
    spec = FleetSpec("tenants", "prefix", prefix="t", waves=WavesSpec(canary=1, approve_after_canary=approve))
    assert fleet.asks_approval(spec, frozen(*waves), dry_run) is asks


# --- joining the parts ------------------------------------------------------------------------------

def test_a_members_latest_outcome_counts_windoweds_after_the_waves_in_first_appearance_order() -> None:
    canary = FleetPart(outcomes=[outcome("a", "done")])
    waves = FleetPart(outcomes=[outcome("b", "waiting_window"), outcome("c", "failed", "x")], brakes=[decision(False)])
    windowed = FleetPart(outcomes=[outcome("b", "done")], brakes=[decision(True)])
    latest = fleet.latest_outcomes([canary, waves, windowed])
    assert [(o.member, o.state) for o in latest] == [("a", "done"), ("b", "done"), ("c", "failed")]
    assert fleet.latest_outcomes([None, None]) == [] and fleet.brakes_of([None, waves, windowed]) == [
        decision(False), decision(True)]


def test_members_no_part_reached_are_not_attempted_in_their_planned_wave_with_their_attributes() -> None:
    got = fleet.unreached(frozen(["a"], ["b", "c"]), [outcome("a", "done")], "why")
    assert got == [MemberOutcome(member=n, state="not_attempted", wave=1, attributes={"region": "eu"}, reason="why")
                   for n in ("b", "c")]
    assert fleet.unreached(None, [], "why") == []


def test_the_window_starts_from_the_waiting_members_and_the_others_are_prior() -> None:
    waiting = outcome("c", "waiting_window", next_window="2026-01-01T00:00:00+00:00")
    parts = [FleetPart(outcomes=[outcome("a", "done")]), FleetPart(outcomes=[outcome("b", "done"), waiting])]
    start = fleet.window_start(parts, waves_failed=True)
    assert start == WindowProgress(prior=[outcome("a", "done"), outcome("b", "done")], waiting=[waiting],
                                   waves_failed=True)
    assert fleet.window_start([None, None], waves_failed=False) == WindowProgress()


def test_after_a_halt_nobody_is_waited_for_and_the_waiting_are_not_attempted_with_the_brakes_reason() -> None:
    waiting = outcome("c", "waiting_window", next_window="2026-01-01T00:00:00+00:00", reason="window closed")
    parts = [None, FleetPart(outcomes=[outcome("b", "failed", "x"), waiting], brakes=[decision(True, "too many")])]
    start = fleet.window_start(parts, waves_failed=True)
    assert start.waiting == [] and start.done == [
        outcome("c", "not_attempted", reason="the brake halted the run: too many")]


def test_a_window_step_with_nobody_waiting_opens_no_member_and_wakes_never(caplog) -> None:
    progress = WindowProgress(prior=[outcome("a", "done")])

    def no_lookup():
        raise AssertionError("members are looked up only when someone waits")

    with caplog.at_level("INFO", logger="schema_deploy"):
        assert fleet.window_step(ctx(), SPEC, no_lookup, None, progress) == (progress, None)
    assert "fleet tenants: no member waits for its window" in caplog.text


def test_a_fleet_without_a_canary_wave_has_an_empty_canary_part_and_slack_hears_nothing() -> None:
    told: list = []
    spec = FleetSpec("tenants", "prefix", prefix="t", waves=WavesSpec(canary=0))
    assert fleet.run_part(ctx(told), spec, members("a"), None, canary=True) == FleetPart() and told == []


# --- how each step ends ----------------------------------------------------------------------------

def test_a_part_with_a_failed_member_fails_naming_the_first_five_and_says_when_the_brake_halted() -> None:
    failed = [outcome(f"m{i}", "failed", f"e{i}") for i in range(6)]
    verdict = fleet.part_verdict("tenants", FleetPart(outcomes=failed, brakes=[decision(True)]), dry_run=False)
    assert verdict == Verdict(True, "fleet tenants: 6 member(s) failed (m0: e0; m1: e1; m2: e2; m3: e3; m4: e4). The "
                                    "brake halted the run: the later members are not attempted. Fix them, then clear "
                                    "this task: members at the release already are skipped as 'already'.")
    one = fleet.part_verdict("tenants", FleetPart(outcomes=failed[:1], brakes=[decision(False)]), dry_run=False)
    assert one.message == ("fleet tenants: 1 member(s) failed (m0: e0). Fix them, then clear this task: members at "
                           "the release already are skipped as 'already'.")


def test_a_part_ends_well_without_failures_and_a_dry_run_part_always_does() -> None:
    assert fleet.part_verdict("tenants", FleetPart(outcomes=[outcome("a", "done")]), dry_run=False) is None
    bad = FleetPart(outcomes=[outcome("a", "failed", "x")], brakes=[decision(True)])
    assert fleet.part_verdict("tenants", bad, dry_run=True) is None


@pytest.mark.parametrize(("parts", "waves_state", "dry_run", "verdict"), [
    ([], "upstream_failed", False, Verdict(True, "waves did not run (upstream_failed): the run failed before them "
                                                 "(see the failed task's log); no member waits for its window")),
    ([], "upstream_failed", True, Verdict(True, "waves did not run (upstream_failed): the run failed before them "
                                                "(see the failed task's log); no member waits for its window")),
    ([FleetPart(outcomes=[outcome("a", "would_apply")]), FleetPart(outcomes=[outcome("b", "failed", "2 rows")])],
     "success", True, Verdict(True, "dry run of fleet tenants: 1 member(s) failed their checks (b: 2 rows); nothing "
                                    "was changed anywhere")),
    ([FleetPart(), None], "failed", True, Verdict(True, "dry run of fleet tenants: 0 member(s) failed their checks (); "
                                                        "nothing was changed anywhere")),
    ([FleetPart(outcomes=[outcome("a", "would_apply")]), None], "skipped", True,
     Verdict(False, "dry run: every member was checked in its wave; no member is changed")),
    ([FleetPart(), None], "skipped", False, Verdict(False, "waves did not run (skipped): no member waits for its "
                                                           "window")),
    ([FleetPart(), None], "none", False, Verdict(False, "waves did not run (none): no member waits for its window")),
    ([FleetPart(), FleetPart()], "success", False, None),
    ([FleetPart(), FleetPart()], "failed", False, None),
])
def test_windowed_ends_before_it_starts_when_nothing_can_wait_and_gives_a_dry_runs_verdict(parts, waves_state,
                                                                                            dry_run, verdict) -> None:
    assert fleet.before_window("tenants", parts, waves_state, dry_run) == verdict


@pytest.mark.parametrize(("progress", "verdict"), [
    (WindowProgress(done=[outcome("a", "done")]), None),
    (WindowProgress(done=[outcome("a", "failed", "boom")]),
     Verdict(True, "fleet tenants: 1 member(s) failed after their window opened (a: boom). Fix them, then clear this "
                   "task: members at the release already are skipped as 'already'.")),
    (WindowProgress(done=[outcome("a", "done")], brakes=[decision(True)]),
     Verdict(True, "fleet tenants: 0 member(s) failed after their window opened (). Fix them, then clear this task: "
                   "members at the release already are skipped as 'already'.")),
    (WindowProgress(done=[outcome("a", "done")], waves_failed=True),
     Verdict(True, "fleet tenants: members failed in the waves (see the waves task's log and the fleet record); every "
                   "member waiting for its window was handled.")),
])
def test_windowed_fails_for_its_own_failures_first_then_for_the_waves(progress, verdict) -> None:
    assert fleet.windowed_verdict("tenants", progress) == verdict


@pytest.mark.parametrize(("dry_run", "states", "reason"), [
    (True, {"canary": "failed"}, "a dry run changes no member"),
    (False, {"canary": "success", "approval": "success", "waves": "skipped"}, "not approved after the canary wave"),
    (False, {"canary": "failed", "approval": None, "waves": "upstream_failed"},
     "the run stopped before them (canary failed, waves upstream_failed)"),
    (False, {"canary": "success", "approval": "failed", "waves": "upstream_failed"},
     "the run stopped before them (approve_canary failed, canary success, waves upstream_failed)"),
    (False, {}, "the run stopped before them (no member task ran)"),
])
def test_members_no_step_reached_say_why_by_the_names_the_run_shows(dry_run, states, reason) -> None:
    assert fleet.unreached_reason(dry_run, states, TASKS) == reason


@pytest.mark.parametrize(("outcome_", "dry_run", "outcomes", "reason", "expected"), [
    ("failed", True, [outcome("a", "failed")], "a dry run changes no member", "dry run"),
    ("done", False, [], "the run stopped before them (no member task ran)", "stopped before the members"),
    ("not approved", False, [outcome("a", "not_attempted")], "the run stopped before them (canary failed)",
     "stopped before the members"),
    ("not approved", False, [outcome("a", "not_attempted")], "not approved after the canary wave", "not approved"),
    ("halted", False, [outcome("a", "failed")], "the run stopped before them (waves failed)", "halted"),
])
def test_the_records_outcome_says_a_dry_run_and_a_run_that_stopped_before_the_members(outcome_, dry_run, outcomes,
                                                                                       reason, expected) -> None:
    assert fleet.record_outcome(outcome_, dry_run, outcomes, reason) == expected


def test_a_run_without_a_release_keeps_no_record_and_tells_slack_nothing(caplog) -> None:
    told: list = []
    with caplog.at_level("INFO", logger="schema_deploy"):
        assert fleet.record_run(ctx(told), SPEC, None, frozen(["a"]), [None, None, None], "why") is None
    assert told == [] and "no fleet release (preflight did not finish)" in caplog.text


# --- what people read -------------------------------------------------------------------------------

CANARY_JINJA = """Canary wave of fleet {{ params.fleet }}:
{% for o in outcomes %}
* {{ o.member }}: {{ o.state }}{% if o.error %} ({{ o.error }}){% endif %}
{% endfor %}
Approve to deploy the other waves; Reject leaves them not attempted."""  # the approval's body before issue 27


@pytest.mark.parametrize("outcomes", [[], [outcome("a", "done")], [outcome("a", "done"), outcome("b", "failed", "x")]])
def test_the_canary_approval_reads_as_it_did_when_jinja_rendered_it(outcomes) -> None:
    import jinja2

    want = jinja2.Environment().from_string(CANARY_JINJA).render(params={"fleet": "tenants"},
                                                                 outcomes=[o.to_xcom() for o in outcomes])
    assert fleet.canary_body("tenants", FleetPart(outcomes=outcomes)) == want


def test_the_canary_approval_lists_each_canary_member_with_its_error() -> None:
    body = fleet.canary_body("tenants", FleetPart(outcomes=[outcome("a", "failed", "cannot connect")]))
    assert body == ("Canary wave of fleet tenants:\n\n* a: failed (cannot connect)\n\nApprove to deploy the other "
                    "waves; Reject leaves them not attempted.")


NOW = datetime(2026, 1, 5, 10, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(("index", "halt", "canary", "approve", "expected"), [
    (0, True, True, False, "none: the brake halted the run"),
    (2, False, False, False, "none (the last wave)"),
    (0, False, True, True, "after the approval (approve_canary)"),
    (0, False, True, False, "2026-01-05T10:05:00+00:00 (pause 0:05:00)"),
    (1, False, False, True, "2026-01-05T10:05:00+00:00 (pause 0:05:00)"),
])
def test_slack_says_when_the_next_wave_starts(index, halt, canary, approve, expected) -> None:
    spec = FleetSpec("tenants", "prefix", prefix="t",
                     waves=WavesSpec(canary=1, pause=timedelta(minutes=5), approve_after_canary=approve))
    assert next_wave(spec, 3, index, decision(halt), canary, NOW) == expected


def test_a_waves_slack_message_counts_states_names_failures_and_the_brake_when_it_matters() -> None:
    done = [outcome("a", "done"), *[outcome(f"f{i:02d}", "failed", "boom") for i in range(11)]]
    facts = wave_facts(SPEC, "2 of 3", done, decision(False, "within the limit"), "none")
    assert facts["members"] == "done 1, failed 11" and facts["failed"].endswith("f09: boom\n…")
    assert facts["brake"] == "within the limit" and facts["next wave"] == "none" and facts["wave"] == "2 of 3"
    assert wave_facts(SPEC, "1", [outcome("a", "done")], decision(False, "ok"), "x")["brake"] == ""


def test_the_runs_slack_summary_says_why_members_were_not_attempted_only_when_some_were() -> None:
    from schema_deploy.pipeline.fleet.record import done_facts

    facts = done_facts(SPEC, "halted", [outcome("a", "failed", "boom"), outcome("b", "not_attempted")], "why", "s3://x")
    assert facts == {"fleet": "tenants", "outcome": "halted", "members": "failed 1, not_attempted 1",
                     "failed": "a: boom", "not attempted": "why", "record": "s3://x"}
    assert done_facts(SPEC, "done", [outcome("a", "done")], "why", "s3://x")["not attempted"] == ""
