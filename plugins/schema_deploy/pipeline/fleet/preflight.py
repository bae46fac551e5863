"""The fleet's release, frozen once from staging's survey before the rehearsal: its plans hold
`staging` and `fleet`, so every member is checked against what was rehearsed."""
from __future__ import annotations

import json

from schema_deploy.backups.store import parse_s3_uri
from schema_deploy.ops import release as releases
from schema_deploy.ops.errors import ReleaseInvalid
from schema_deploy.pipeline.deploy import load_release
from schema_deploy.pipeline.fleet.members import FLEET_ROLE
from schema_deploy.pipeline.record import put_document
from schema_deploy.pipeline.results import BundleCheck, PreflightResult, ReleaseRef, TargetSurvey
from schema_deploy.pipeline.target import Deployment


def fleet_preflight(ctx: Deployment, checked: BundleCheck, staging: TargetSurvey) -> PreflightResult:
    """The fleet's release, with no database: staging's plan frozen for staging and for the fleet, the
    fleet plan carrying staging's pending set and fingerprint before the change (what each member is
    compared with). A given release that holds a fleet plan is used as it is (a resume)."""
    planless = load_release(ctx, checked)
    if checked.given and planless.plan(FLEET_ROLE) is not None:
        release = planless
    elif not staging.pending:  # staging is at the release: a run again of a rehearsed release (resume)
        release = earlier_fleet_release(ctx, planless)
    else:
        fleet_plan = {**staging.plan, "before": {"pending": staging.pending, "fingerprint": staging.fingerprint}}
        frozen = releases.freeze(planless.to_bundle(), planless.bundle, lint=checked.lint, prechecks=staging.prechecks,
                                 plans={staging.env: staging.plan, FLEET_ROLE: fleet_plan},
                                 source={**planless.source, "release": planless.uri} if checked.given
                                 else planless.source, verify=planless.verify)
        release = releases.store(ctx.store.s3, frozen, ctx.store.root, ctx.store.sse)
        bucket, key = parse_s3_uri(rehearsed_key(ctx, planless))
        put_document(ctx, bucket, key, {"bundle": planless.uri, "release": release.uri, "run": ctx.run.run_id})
    ctx.log.info("fleet release %s: %s", release.short, release.uri)
    plan = release.plan(FLEET_ROLE) or {}
    return PreflightResult(release=ReleaseRef(**release.summary()).to_xcom(), migrations=plan.get("migrations", []),
                           online=ctx.params.online, pending={staging.env: staging.pending}, lint=checked.lint,
                           prechecks=list(release.prechecks), table_sizes=staging.table_sizes,
                           production_table_bytes=0, run=ctx.run.facts())


def rehearsed_key(ctx: Deployment, planless: releases.Release) -> str:
    """Where the fleet release rehearsed from this bundle's content is named: PREFIX/fleets/rehearsed/<digest>.json."""
    return f"{ctx.store.root.rstrip('/')}/fleets/rehearsed/{planless.digest}.json"


def earlier_fleet_release(ctx: Deployment, planless: releases.Release) -> releases.Release:
    """The fleet release an earlier run froze and rehearsed from the same bundle content, for a run
    again after staging is at it (members at it are 'already', the others get the rehearsed plan)."""
    from schema_deploy.backups.store import not_found
    from schema_deploy.pipeline.errors import NothingToRehearse

    uri = rehearsed_key(ctx, planless)
    bucket, key = parse_s3_uri(uri)
    try:
        pointer = json.loads(ctx.store.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except Exception as exc:  # noqa: BLE001 - not found is the user's case; anything else is S3's
        if getattr(exc, "response", None) is not None and not_found(exc):
            raise NothingToRehearse(planless.short, uri) from None
        raise
    release = releases.load(ctx.store.s3, pointer["release"])
    if release.plan(FLEET_ROLE) is None:
        raise ReleaseInvalid(release.uri, f"the release {uri} names holds no {FLEET_ROLE!r} plan",
                             "Run the fleet from its migrations folder with staging before the change.")
    ctx.log.info("staging is at this bundle already: the fleet release rehearsed by run %s is used (%s)",
                 pointer.get("run", "?"), release.uri)
    return release
