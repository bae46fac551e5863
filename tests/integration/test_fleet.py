"""The fleet pipeline on the local stack: small member databases on the staging cluster, a release
frozen from sql/migrations, the waves run in process (`fleet.run_fleet`), the S3 stand-in as the store."""
from __future__ import annotations

import json
import logging
import uuid
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from schema_deploy.audit import chain
from schema_deploy.backups.store import parse_s3_uri
from schema_deploy.config.fleets import FleetSpec, Share, WavesSpec
from schema_deploy.config.settings import DeployConfig
from schema_deploy.pg.fingerprint import fingerprint_digest, schema_fingerprint
from schema_deploy.pipeline import Deployment, RunInfo, RunParams, Store, Target, deploy, fleet
from schema_deploy.pipeline.fleet.members import Member
from schema_deploy.state.ledger import read_rows
from seed import reset
from tests.conftest import drop_database, with_database

REPO = Path(__file__).resolve().parents[2]
EPIC5 = "20251017120000_epic5_schema_completion"
EXPAND, CONTRACT = "20251103090000_event_date_expand", "20251103090100_event_date_contract"
PENDING = [EPIC5, EXPAND, CONTRACT]  # the shipped bundle after the baseline
MEMBERS = 6
CLOSED = "postgresql://fleet:s3cret-pw@127.0.0.1:1/tenant_gone"  # nothing listens on port 1


@pytest.fixture(scope="module")
def template(stack_env: dict[str, str]):
    """One database at the baseline with small data; members are copies of it (CREATE DATABASE … TEMPLATE)."""
    name = f"t_fleet_tpl_{uuid.uuid4().hex[:6]}"
    url = with_database(stack_env["STAGING_DATABASE_URL"], name)
    reset(url, seed=7, scale="small", log=lambda _: None)
    yield name
    drop_database(stack_env["STAGING_DATABASE_URL"], name)


@pytest.fixture
def databases(stack_env: dict[str, str], template: str):
    """Staging (the rehearsal) and MEMBERS tenants, each a copy of the template."""
    base = stack_env["STAGING_DATABASE_URL"]
    tag = uuid.uuid4().hex[:6]
    names = [f"t_fleet_{tag}_staging"] + [f"t_fleet_{tag}_tenant_{i:02d}" for i in range(MEMBERS)]
    with psycopg.connect(base, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    staging = Target("staging", "staging", with_database(base, names[0]))
    members = [Member(f"tenant_{i:02d}", "member", with_database(base, n)) for i, n in enumerate(names[1:])]
    yield staging, members
    for name in names:
        drop_database(base, name)


@pytest.fixture
def ctx(stack_env: dict[str, str], s3, caplog) -> Deployment:
    cfg = DeployConfig(bundles=(("main", REPO / "sql" / "migrations"),), verify_dir=REPO / "sql" / "verify")
    store = Store(s3, f"s3://{stack_env['BACKUP_BUCKET']}/fleet-{uuid.uuid4().hex[:8]}",
                  {"ServerSideEncryption": "AES256"})
    caplog.set_level(logging.INFO, logger="schema_deploy")
    return Deployment(cfg=cfg, store=store, run=RunInfo(run_id=f"fleet__{uuid.uuid4().hex[:6]}", triggered_by="ci"))


def freeze(ctx: Deployment, staging: Target, given=None):
    """The fleet's release from staging's survey before the change (the rehearsal's input)."""
    checked = deploy.preflight_bundle(ctx, given)
    return fleet.fleet_preflight(ctx, checked, deploy.preflight_production(ctx, staging, checked))


def spec(**waves) -> FleetSpec:
    return FleetSpec("tenants", "prefix", prefix="tenant_", waves=WavesSpec(**waves), backup=False)


def ledger(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        return {r.migration_name: r.checksum for r in read_rows(conn) if r.applied}


def fleet_rows(url: str) -> list[chain.AuditRow]:
    with psycopg.connect(url) as conn:
        chain.ensure_table(conn)
        assert chain.verify_chain(conn).ok
        return [r for r in chain.read_rows(conn) if r.kind == "fleet"]


def plant_orphans(url: str, n: int = 3) -> None:
    with psycopg.connect(url) as conn:
        conn.execute('UPDATE experiment_assignments SET "experimentId" = \'exp_missing_\' || id WHERE id IN '
                     '(SELECT id FROM experiment_assignments ORDER BY id LIMIT %s)', (n,))


def remove_orphans(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute('DELETE FROM experiment_assignments WHERE "experimentId" LIKE \'exp_missing_%\'')


def by_member(run) -> dict[str, object]:
    return {o.member: o for o in run.outcomes}


def kept(ctx: Deployment, uri: str) -> dict:
    bucket, key = parse_s3_uri(uri)
    return json.loads(ctx.store.s3.get_object(Bucket=bucket, Key=key)["Body"].read())


@pytest.mark.slow
def test_every_member_reaches_the_release_with_a_verified_backup_and_one_audit_row_each(ctx, databases) -> None:
    staging, members = databases
    pre = freeze(ctx, staging)
    frozen = {m.name: m.checksum for m in pre.release.migrations}
    tenants = replace(spec(canary=1, size=Share(50, True), parallel=2), backup=True)

    run = fleet.run_fleet(ctx, tenants, members, pre)

    assert [len(w) for w in run.waves] == [1, 3, 2] and [b.halt for b in run.brakes] == [False] * 3
    assert {o.state for o in run.outcomes} == {"done"} and len(run.outcomes) == MEMBERS
    for m, o in zip(members, sorted(run.outcomes, key=lambda o: o.member)):
        assert ledger(m.url) == frozen and o.migrations == PENDING and o.tries == 1
        # Each tenant's backfill ran inline, before its contract, over every one of its events.
        (backfill,) = o.backfills
        assert backfill.id == EXPAND and backfill.state == "done" and backfill.rows_done > 0
        [row] = fleet_rows(m.url)
        assert row.payload["release"]["sha256"] == pre.release.sha256 and row.payload["outcome"] == "done"
        assert o.audit.id == row.id and o.backup.startswith(f"{ctx.store.root}/fleets/tenants/runs/")
        assert o.apply_s > 0 and o.verify_s > 0 and o.apply_started <= o.apply_ended
    uri, _ = fleet.keep_fleet_record(ctx, tenants, fleet.fleet_record(ctx, tenants, pre, run))
    document = kept(ctx, uri)
    assert uri == f"{ctx.store.root}/fleets/tenants/runs/{ctx.run.run_id}/fleet.json"
    assert document["outcome"] == "done" and document["counts"] == {"done": MEMBERS}
    assert [m["member"] for m in document["members"]] == [m.name for m in members]


@pytest.mark.slow
def test_a_member_with_orphan_rows_and_an_unreachable_one_fail_alone_and_a_second_run_does_only_the_rest(
        ctx, databases) -> None:
    staging, members = databases
    plant_orphans(members[2].url)
    gone = Member("tenant_gone", "member", CLOSED)
    pre = freeze(ctx, staging)
    tenants = spec(canary=1, size=Share(3), parallel=3, halt_after=Share(2))

    first = by_member(fleet.run_fleet(ctx, tenants, members + [gone], pre))

    orphaned, unreachable = first["tenant_02"], first["tenant_gone"]
    assert orphaned.state == "failed" and orphaned.tries == 1
    assert orphaned.error.startswith("data prechecks failed; nothing was changed: - ") and orphaned.error.endswith(
        f"{EPIC5}/migration.sql:10: 3 rows of experiment_assignments whose (experimentId) has no row in "
        "personalization_experiments (id)")
    assert unreachable.state == "failed" and unreachable.tries == fleet.TRIES
    assert unreachable.error.startswith("cannot connect to postgresql://fleet:****@127.0.0.1:1/tenant_gone")
    assert "s3cret" not in json.dumps([o.to_xcom() for o in first.values()])
    assert {n for n, o in first.items() if o.state == "done"} == {m.name for m in members} - {"tenant_02"}
    assert ledger(members[2].url) == {m: c for m, c in ledger(members[2].url).items() if m != EPIC5}
    assert fleet_rows(members[2].url) == []  # nothing changed there, so nothing to record

    remove_orphans(members[2].url)
    again = replace(ctx, run=RunInfo(run_id=f"fleet__{uuid.uuid4().hex[:6]}"), loaded={})
    release = deploy.load_release(again, pre)
    pre2 = freeze(again, staging, given=release)
    assert pre2.release.sha256 == pre.release.sha256  # the same release: a resume
    second = by_member(fleet.run_fleet(again, tenants, members, pre2))

    assert second["tenant_02"].state == "done" and second["tenant_02"].migrations == PENDING
    assert {o.state for n, o in second.items() if n != "tenant_02"} == {"already"}
    assert all(len(fleet_rows(m.url)) == 1 for m in members)


@pytest.mark.slow
def test_run_apart_as_the_dag_runs_it_the_parts_travel_as_xcom_and_join_into_the_record_with_a_message_a_wave(
        ctx, databases) -> None:
    """deploy_fleet's tasks without Airflow: the members frozen, the canary's part, the waves' part
    (the brake counting the canary's), windowed with nobody waiting, then the record joined from the
    parts; each value through its XCom form, as it crosses between tasks."""
    staging, members = databases
    plant_orphans(members[2].url)
    pre = freeze(ctx, staging)
    told: list = []
    run = replace(ctx, notify=lambda event, facts, links=None: told.append((event, facts)) or {"ok": True})
    tenants = spec(canary=1, size=Share(50, True), parallel=2)  # 00 | 01 02 03 | 04 05, halt_after 0

    frozen = fleet.FleetMembers.from_xcom(fleet.freeze_members(run, tenants, members, []).to_xcom())
    here = fleet.refound(frozen, list(reversed(members)))
    first = fleet.FleetPart.from_xcom(fleet.run_part(run, tenants, here, pre, canary=True).to_xcom())
    rest = fleet.FleetPart.from_xcom(fleet.run_part(run, tenants, here, pre, canary=False, prior=first).to_xcom())

    assert frozen.waves == [["tenant_00"], ["tenant_01", "tenant_02", "tenant_03"], ["tenant_04", "tenant_05"]]
    assert fleet.part_verdict("tenants", first, dry_run=False) is None
    verdict = fleet.part_verdict("tenants", rest, dry_run=False)
    assert verdict.failed and verdict.message.startswith("fleet tenants: 1 member(s) failed (tenant_02: data "
                                                         "prechecks failed; nothing was changed:")
    assert ". The brake halted the run: the later members are not attempted. Fix them" in verdict.message
    assert fleet.before_window("tenants", [first, rest], "failed", dry_run=False) is None
    progress, wake = fleet.window_step(run, tenants, lambda: here, pre,
                                       fleet.window_start([first, rest], waves_failed=True))
    assert wake is None and fleet.windowed_verdict("tenants", progress).message.startswith(
        "fleet tenants: members failed in the waves")

    reason = fleet.unreached_reason(False, {"canary": "success", "waves": "failed"}, {})
    record = fleet.record_run(run, tenants, pre, frozen, [first, rest, progress.part], reason)
    document = kept(run, record.uri)
    assert record.outcome == document["outcome"] == "halted"
    assert record.counts == document["counts"] == {"done": 3, "failed": 1, "not_attempted": 2}
    assert [e for e, _ in told] == ["fleet_wave", "fleet_wave", "fleet_done"]
    assert told[0][1]["wave"] == "1 of 3 (canary)" and told[1][1]["next wave"] == "none: the brake halted the run"
    assert told[2][1]["outcome"] == "halted" and told[2][1]["record"] == record.uri
    assert told[2][1]["not attempted"] == reason == "the run stopped before them (canary success, waves failed)"


@pytest.mark.slow
def test_a_dry_run_checks_every_member_and_changes_nothing_anywhere(ctx, databases) -> None:
    staging, members = databases
    plant_orphans(members[0].url)  # the canary: a real run would halt there
    plant_orphans(members[4].url)
    before = {m.name: (ledger(m.url), fingerprint(m.url)) for m in members}
    pre = freeze(ctx, staging)
    dry = replace(ctx, params=RunParams(dry_run=True))

    got = fleet.run_fleet(dry, spec(canary=1, size=Share(2), parallel=2, halt_after=Share(1)), members, pre)
    run = by_member(got)

    assert {n: o.state for n, o in run.items()} == {**{m.name: "would_apply" for m in members},
                                                    "tenant_00": "failed", "tenant_04": "failed"}
    assert not any(b.halt for b in got.brakes) and got.brakes[0].reason.startswith(
        "dry run, every member is checked; a real run would stop here: 1 member(s) failed so far, more than the "
        "limit of 0")
    assert run["tenant_01"].pending == PENDING and "data prechecks failed" in run["tenant_04"].error
    assert {m.name: (ledger(m.url), fingerprint(m.url)) for m in members} == before
    assert all(not fleet_rows(m.url) for m in members)


def fingerprint(url: str) -> str:
    with psycopg.connect(url) as conn:
        return fingerprint_digest(schema_fingerprint(conn))


def overlap(outcomes) -> int:
    """The most applies running at one moment, from the outcomes' timestamps."""
    events = sorted([(datetime.fromisoformat(o.apply_started), 1) for o in outcomes]
                    + [(datetime.fromisoformat(o.apply_ended), -1) for o in outcomes])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.slow
def test_parallel_is_honoured_at_most_p_applies_at_once_and_more_than_one(ctx, databases) -> None:
    staging, members = databases
    pre = freeze(ctx, staging)

    run = fleet.run_fleet(ctx, spec(canary=0, size=Share(MEMBERS), parallel=3), members, pre)

    assert len(run.waves) == 1 and {o.state for o in run.outcomes} == {"done"}
    assert 1 < overlap(run.outcomes) <= 3


@pytest.mark.slow
def test_a_failed_canary_halts_the_run_and_the_record_lists_every_member_not_attempted(ctx, databases) -> None:
    staging, members = databases
    plant_orphans(members[0].url)
    pre = freeze(ctx, staging)
    tenants = spec(canary=1, size=Share(2), parallel=2, halt_after=Share(3))

    run = fleet.run_fleet(ctx, tenants, members, pre)
    document = kept(ctx, fleet.keep_fleet_record(ctx, tenants, fleet.fleet_record(ctx, tenants, pre, run))[0])

    assert len(run.brakes) == 1 and run.brakes[0].halt and run.brakes[0].limit == 0
    assert document["outcome"] == "halted" and document["counts"] == {"failed": 1, "not_attempted": MEMBERS - 1}
    listed = {m["member"]: m for m in document["members"]}
    assert set(listed) == {m.name for m in members} and listed["tenant_00"]["state"] == "failed"
    assert all(listed[m.name]["reason"].startswith("the brake halted the run after wave 0: 1 member(s) failed so "
                                                   "far, more than the limit of 0") for m in members[1:])
    assert all(ledger(m.url) == ledger(members[1].url) and EPIC5 not in ledger(m.url) for m in members)


@pytest.mark.slow
def test_members_wait_for_their_regions_window_while_the_others_of_their_wave_proceed(ctx, databases) -> None:
    from datetime import timedelta, timezone

    from schema_deploy.config.fleets import FleetWindow
    from schema_deploy.config.windows import Window

    staging, members = databases
    regional = [replace(m, attributes=(("region", "eu" if i % 2 else "us"),)) for i, m in enumerate(members)]
    eu = Window("0 1 * * *", timedelta(hours=2), "UTC", "eu_night")
    us = Window("0 7 * * *", timedelta(hours=2), "UTC", "us_night")
    tenants = replace(spec(canary=0, size=Share(MEMBERS), parallel=3),
                      window=FleetWindow(by="region", windows=(("eu", eu), ("us", us))))
    pre = freeze(ctx, staging)

    run = by_member(fleet.run_fleet(ctx, tenants, regional, pre,
                                    now=lambda: datetime(2026, 3, 3, 1, 30, tzinfo=timezone.utc)))

    assert {n: o.state for n, o in run.items()} == {m.name: "done" if i % 2 else "waiting_window"
                                                    for i, m in enumerate(members)}
    assert run["tenant_00"].next_window == "2026-03-03T07:00:00+00:00" and EPIC5 not in ledger(members[0].url)


@pytest.mark.slow
def test_an_edited_applied_migration_and_a_schema_unlike_the_rehearsals_fail_naming_the_cause(ctx, databases) -> None:
    staging, members = databases
    with psycopg.connect(members[1].url) as conn:
        conn.execute("UPDATE _prisma_migrations SET checksum = repeat('0', 64) WHERE migration_name LIKE '%baseline'")
    with psycopg.connect(members[2].url) as conn:
        conn.execute('CREATE INDEX "by_hand_idx" ON "experiment_assignments" ("variant")')
    pre = freeze(ctx, staging)

    run = by_member(fleet.run_fleet(ctx, spec(canary=0, size=Share(MEMBERS), parallel=3, halt_after=Share(2)),
                                    members, pre))

    assert run["tenant_01"].state == "failed" and "20250915090000_baseline was edited after it was applied" \
        in run["tenant_01"].detail
    assert run["tenant_02"].state == "failed" and run["tenant_02"].error.startswith(
        "tenant_02's schema differs from staging's before the rehearsal") and "by_hand_idx" in run["tenant_02"].error
    assert {o.state for n, o in run.items() if n not in ("tenant_01", "tenant_02")} == {"done"}


@pytest.mark.slow
def test_members_come_from_a_catalog_query_on_a_real_database(ctx, databases) -> None:
    staging, members = databases
    with psycopg.connect(staging.url) as conn:
        conn.execute("CREATE TABLE tenants (conn_id text, region text, active bool)")
        conn.execute("INSERT INTO tenants VALUES ('tenant_01', 'eu', true), (%s, 'us', true), ('tenant_09', 'eu', false)",
                     (members[3].url,))
    urls = {m.name: m.url for m in members}
    tenants = FleetSpec("tenants", "catalog", catalog_conn="tenants_catalog",
                        catalog_query="select conn_id, region from tenants where active")

    found = fleet.resolve_members(tenants, url_of=urls.__getitem__, conn_ids=lambda: [],
                                  catalog=lambda conn, query: fleet.catalog_rows(staging.url, query))

    assert [(m.attrs, m.url) for m in found] == [({"region": "us"}, members[3].url), ({"region": "eu"}, members[1].url)]
    assert found[0].name.endswith(f"/{members[3].database}") and found[1].name == "tenant_01"


@pytest.mark.slow
def test_a_failure_in_wave_two_above_halt_after_stops_the_run_and_lists_the_later_waves_not_attempted(
        ctx, databases) -> None:
    staging, members = databases
    plant_orphans(members[1].url)
    plant_orphans(members[2].url)
    pre = freeze(ctx, staging)
    tenants = spec(canary=1, size=Share(2), parallel=2, halt_after=Share(1))  # waves: 00 | 01 02 | 03 04 | 05

    run = fleet.run_fleet(ctx, tenants, members, pre)

    states = {o.member: o.state for o in run.outcomes}
    assert states == {"tenant_00": "done", "tenant_01": "failed", "tenant_02": "failed",
                      "tenant_03": "not_attempted", "tenant_04": "not_attempted", "tenant_05": "not_attempted"}
    assert [b.halt for b in run.brakes] == [False, True]
    assert by_member(run)["tenant_05"].reason.startswith(
        "the brake halted the run after wave 1: 2 member(s) failed so far, more than the limit of 1: the run stops "
        "(tenant_01: data prechecks failed")
    assert all(EPIC5 not in ledger(m.url) for m in members[1:])


@pytest.mark.slow
def test_members_whose_window_was_closed_are_deployed_once_it_opens_and_the_next_opening_is_returned(
        ctx, databases) -> None:
    from datetime import timedelta, timezone

    from schema_deploy.config.fleets import FleetWindow
    from schema_deploy.config.windows import Window

    staging, members = databases
    region = {m.name: ("eu", "us", "ap")[i % 3] for i, m in enumerate(members)}
    regional = [replace(m, attributes=(("region", region[m.name]),)) for m in members]
    windows = {"eu": Window("0 1 * * *", timedelta(hours=2), "UTC", "eu_night"),
               "us": Window("0 7 * * *", timedelta(hours=2), "UTC", "us_night"),
               "ap": Window("0 13 * * *", timedelta(hours=2), "UTC", "ap_night")}
    tenants = replace(spec(canary=0, size=Share(MEMBERS), parallel=3),
                      window=FleetWindow(by="region", windows=tuple(windows.items())))
    pre = freeze(ctx, staging)
    at = lambda hour: (lambda: datetime(2026, 3, 3, hour, 30, tzinfo=timezone.utc))  # noqa: E731

    waves = fleet.run_fleet(ctx, tenants, regional, pre, now=at(1))
    waiting = [o for o in waves.outcomes if o.state == "waiting_window"]
    assert sorted(o.member for o in waiting) == sorted(n for n, r in region.items() if r != "eu")

    later, wake = fleet.run_windowed(ctx, tenants, regional, pre, waiting,
                                     prior=[o for o in waves.outcomes if o not in waiting], now=at(7))

    assert {o.member: o.state for o in later.outcomes} == {n: "done" if r == "us" else "waiting_window"
                                                           for n, r in region.items() if r != "eu"}
    assert wake == datetime(2026, 3, 3, 13, 0, tzinfo=timezone.utc) and len(later.brakes) == 1
    assert all(EPIC5 in ledger(m.url) for m in regional if region[m.name] != "ap")
    assert all(EPIC5 not in ledger(m.url) for m in regional if region[m.name] == "ap")

    last, wake = fleet.run_windowed(ctx, tenants, regional, pre,
                                    [o for o in later.outcomes if o.state == "waiting_window"], now=at(13))
    assert wake is None and {o.state for o in last.outcomes} == {"done"}
    assert all(EPIC5 in ledger(m.url) for m in regional)


@pytest.mark.slow
def test_the_canary_is_a_member_whose_window_is_open_and_a_canary_left_waiting_halts_the_run(ctx, databases) -> None:
    from datetime import timedelta, timezone

    from schema_deploy.config.fleets import FleetWindow
    from schema_deploy.config.windows import Window

    staging, members = databases
    regional = [replace(m, attributes=(("region", "eu" if i < 3 else "us"),)) for i, m in enumerate(members)]
    windows = (("eu", Window("0 1 * * *", timedelta(hours=2), "UTC", "eu_night")),
               ("us", Window("0 7 * * *", timedelta(hours=2), "UTC", "us_night")))
    tenants = replace(spec(canary=1, size=Share(MEMBERS), parallel=3),
                      window=FleetWindow(by="region", windows=windows))
    us_open = datetime(2026, 3, 3, 7, 30, tzinfo=timezone.utc)
    assert fleet.canary_first(tenants, regional, us_open)[0].name == "tenant_03"
    pre = freeze(ctx, staging)

    run = by_member(fleet.run_fleet(ctx, tenants, regional, pre, now=lambda: us_open))
    assert run["tenant_03"].wave == 0 and run["tenant_03"].state == "done"
    assert {o.state for n, o in run.items() if n in ("tenant_00", "tenant_01", "tenant_02")} == {"waiting_window"}

    closed = datetime(2026, 3, 3, 12, 0, tzinfo=timezone.utc)  # no window open: the canary would wait
    again = fleet.run_waves(ctx, tenants, fleet.canary_first(tenants, regional, closed), pre, now=lambda: closed)
    assert again.brakes[0].halt and again.brakes[0].reason.startswith(
        "the canary could not run: tenant_00 wait(s) for a closed window (opens 2026-03-04T01:00:00+00:00)")
    assert {o.state for o in again.outcomes if o.member != "tenant_00"} == {"not_attempted"}


@pytest.mark.slow
def test_a_run_again_once_staging_is_at_the_bundle_uses_the_rehearsed_fleet_release_or_says_why_it_cannot(
        ctx, databases) -> None:
    from schema_deploy.pipeline.errors import NothingToRehearse

    staging, members = databases
    pre = freeze(ctx, staging)
    assert fleet.deploy_member(ctx, Member("staging", "member", staging.url), pre, fleet="tenants",
                               backup=False, dry_run=False).state == "done"  # the rehearsal, as apply_staging would
    again = replace(ctx, run=RunInfo(run_id=f"fleet__{uuid.uuid4().hex[:6]}"), loaded={})

    pre2 = freeze(again, staging)

    assert pre2.release.sha256 == pre.release.sha256 and pre2.migrations == pre.migrations
    run = by_member(fleet.run_fleet(again, spec(canary=1, size=Share(5), parallel=3), members, pre2))
    assert {o.state for o in run.values()} == {"done"}

    elsewhere = replace(again, store=replace(ctx.store, root=f"{ctx.store.root}-other"), loaded={})
    with pytest.raises(NothingToRehearse) as caught:
        freeze(elsewhere, staging)
    assert str(caught.value).startswith("staging has nothing pending for bundle ")
    assert f"no fleet release rehearsed from it was found ({ctx.store.root}-other/fleets/rehearsed/" in str(caught.value)
    assert str(caught.value).endswith("otherwise staging was migrated outside deploy_fleet: restore staging to the "
                                      "fleet's schema and run again.")
