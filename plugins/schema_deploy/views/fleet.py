"""The UI page's fleet view: a fleet run's members × state, filtered, as rows or CSV. No Airflow here.

A finished run is read from its fleet record (`pipeline.fleet.fleet_record`, kept by
`keep_fleet_record` at PREFIX/fleets/<fleet>/runs/<run id>/fleet.json); a run in progress has no
record yet and is read from what its tasks pushed (`fleet_members`' return value, the canary's and
the waves' and windowed's `fleet_run`), its members not reached yet being "pending". Either way a row is one
member, its state in the view's words (VIEW_STATES), its wave, duration and first error line.
"""
from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from schema_deploy.errors import UsageError
from schema_deploy.redact import scrub

# The recorded states (pipeline.results.MemberOutcome.state) in the view's words.
STATE_OF = {"done": "done", "already": "done", "failed": "failed", "not_attempted": "not attempted",
            "waiting_window": "skipped by window", "would_apply": "dry run", "pending": "pending"}
VIEW_STATES = ("done", "failed", "pending", "not attempted", "skipped by window", "dry run")
RECORD_NAME = "fleet.json"
RECORD_VERSION = 1
CSV_COLUMNS = ("fleet", "run_id", "member", "state", "recorded_state", "wave", "seconds", "started", "ended",
               "tries", "error", "reason", "next_window", "attributes")
_RECORD_KEY = re.compile(r"fleets/(?P<fleet>[^/]+)/runs/(?P<run>[^/]+)/" + re.escape(RECORD_NAME) + "$")


# --- errors the page shows (HTTP 404 for what is not there, 400 for a bad filter) ----------------

class FleetViewError(UsageError):
    """Something the page's user asked for that the view cannot show; the message says what to do."""

    status = 400


class NoFleetRecords(FleetViewError):
    status = 404

    def __init__(self, where: str) -> None:
        self.where = where
        super().__init__(f"no fleet records yet under {where}: a deploy_fleet run writes one when it ends "
                         "(its fleet_record task), and a run in progress shows here once its fleet_members "
                         "task has run.")


class FleetNotFound(FleetViewError):
    status = 404

    def __init__(self, fleet: str, where: str, known: Sequence[str]) -> None:
        self.fleet, self.where, self.known = fleet, where, list(known)
        super().__init__(f"fleet {fleet!r} has no records under {where} and no deploy_fleet run in progress; "
                         f"fleets with records: {', '.join(known) or 'none'}.")


class FleetRunNotFound(FleetViewError):
    status = 404

    def __init__(self, fleet: str, run_id: str, where: str, known: Sequence[str]) -> None:
        self.fleet, self.run_id, self.where, self.known = fleet, run_id, where, list(known)
        shown = ", ".join(known[:10]) + (", …" if len(known) > 10 else "")
        super().__init__(f"fleet {fleet!r} has no run {run_id!r}: no record under {where} and no deploy_fleet "
                         f"run of that id in progress; its recorded runs, newest first: {shown or 'none'}.")


class NotAFleetRecord(FleetViewError):
    status = 502

    def __init__(self, uri: str, problem: str) -> None:
        self.uri, self.problem = uri, problem
        super().__init__(f"{uri} is not a fleet record this page can read ({problem}): it was written by "
                         "another version of schema_deploy, or by hand; read it with `aws s3 cp`.")


class BadFilter(FleetViewError):
    def __init__(self, name: str, value: str, valid: str) -> None:
        self.name, self.value, self.valid = name, value, valid
        super().__init__(f"filter {name}={value!r} is not valid: {valid}.")


# --- rows ---------------------------------------------------------------------------------------

def row_of(outcome: dict[str, Any]) -> dict[str, Any]:
    """One member's row from its outcome (MemberOutcome.to_xcom(), as the record holds it)."""
    recorded = str(outcome.get("state") or "")
    return {"member": str(outcome.get("member") or ""), "state": STATE_OF.get(recorded, recorded or "unknown"),
            "recorded_state": recorded, "wave": int(outcome.get("wave") or 0),
            "attributes": {str(k): str(v) for k, v in (outcome.get("attributes") or {}).items()},
            "seconds": outcome.get("seconds") or None, "started": outcome.get("started") or None,
            "ended": outcome.get("ended") or None, "tries": outcome.get("tries") or 0,
            "error": scrub(str(outcome.get("error") or "")), "reason": str(outcome.get("reason") or ""),
            "next_window": outcome.get("next_window") or None}


def _sorted(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (r["wave"], r["member"]))


def view_of_record(record: Any, uri: str) -> dict[str, Any]:
    """The view of a finished run from its fleet record."""
    if not isinstance(record, dict) or record.get("kind") != "fleet":
        raise NotAFleetRecord(uri, f"kind is {record.get('kind') if isinstance(record, dict) else None!r}, "
                                   "not 'fleet'")
    if record.get("record_version") != RECORD_VERSION:
        raise NotAFleetRecord(uri, f"record_version {record.get('record_version')!r}; this page reads "
                                   f"{RECORD_VERSION}")
    run = record.get("run") or {}
    return {"fleet": record.get("fleet"), "run_id": run.get("run_id"), "source": "record", "uri": uri,
            "outcome": record.get("outcome"), "started": run.get("started") or None,
            "triggered_by": run.get("triggered_by"), "url": run.get("url") or None,
            "release": record.get("release") or {}, "settings": record.get("settings") or {},
            "waves": record.get("waves") or [], "brakes": record.get("brakes") or [],
            "rows": _sorted(row_of(m) for m in record.get("members") or [])}


def view_of_live(run_id: str, members: dict[str, Any] | None, parts: Sequence[dict[str, Any] | None],
                 dag_state: str | None = None, url: str | None = None) -> dict[str, Any]:
    """The view of a run in progress: `members` is fleet_members' return value ({fleet, members, waves}),
    `parts` the canary's, the waves' and windowed's `fleet_run` XComs ({outcomes, brakes}) pushed so
    far, in that order: a later part's outcome of a member replaces an earlier one (a member waiting
    for its window in the waves, done in windowed). A member no part mentions yet is pending, in its
    planned wave."""
    members = members or {}
    outcomes = list({o.get("member"): o for p in parts if p for o in p.get("outcomes") or []}.values())
    brakes = [b for p in parts if p for b in p.get("brakes") or []]
    waves = members.get("waves") or []
    wave_of = {n: i for i, w in enumerate(waves) for n in w}
    seen = {o.get("member") for o in outcomes}
    pending = [{"member": m["name"], "state": "pending", "wave": wave_of.get(m["name"], 0),
                "attributes": m.get("attributes") or {}, "reason": "not reached yet"}
               for m in members.get("members") or [] if m.get("name") not in seen]
    halted = any(b.get("halt") for b in brakes)
    return {"fleet": members.get("fleet"), "run_id": run_id, "source": "live", "uri": None,
            "outcome": "halted" if halted else f"in progress ({dag_state})" if dag_state else "in progress",
            "started": None, "triggered_by": None, "url": url, "release": {}, "settings": {},
            "waves": waves, "brakes": brakes, "rows": _sorted(row_of(o) for o in [*outcomes, *pending])}


def counts(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Members per view state, every state listed (zeros too), in VIEW_STATES order."""
    got = {s: 0 for s in VIEW_STATES}
    for r in rows:
        got[r["state"]] = got.get(r["state"], 0) + 1
    return got


# --- filters --------------------------------------------------------------------------------------

def parse_states(value: str | None) -> list[str]:
    """`state=` as given: view states separated by commas; '_' or '-' may stand for a space
    (not_attempted, skipped-by-window). Empty: every state."""
    if not value or not value.strip():
        return []
    states = []
    for part in value.split(","):
        name = re.sub(r"[_\-\s]+", " ", part.strip().lower())
        if name not in VIEW_STATES:
            raise BadFilter("state", part.strip(), f"a state is one of {', '.join(VIEW_STATES)} "
                                                   "(several separated by commas)")
        states.append(name)
    return states


def parse_wave(value: str | None, waves: Sequence[Any]) -> int | None:
    """`wave=` as given: a wave's number as recorded (0 is the first wave, the canary when there is
    one), which must be one of the run's waves. Empty: every wave."""
    if value is None or not str(value).strip():
        return None
    valid = (f"a wave is a whole number from 0 to {len(waves) - 1} (0 is the first wave)" if waves
             else "this run has no waves planned")
    try:
        wave = int(str(value).strip())
    except ValueError:
        raise BadFilter("wave", str(value), valid) from None
    if not 0 <= wave < len(waves):
        raise BadFilter("wave", str(value), valid)
    return wave


def matches(row: dict[str, Any], text: str) -> bool:
    """Case-insensitive: in the member's name, its error, its reason or an attribute (`key=value`)."""
    needle = text.strip().lower()
    hay = [row["member"], row["error"], row["reason"], *(f"{k}={v}" for k, v in row["attributes"].items())]
    return not needle or any(needle in h.lower() for h in hay)


def filtered(view: dict[str, Any], state: str | None = None, text: str | None = None,
             wave: str | None = None) -> dict[str, Any]:
    """The view with its rows cut to the filters, `counts` over every row (what the run did) and
    `shown` the rows left; a bad filter is refused naming the valid values."""
    states, at = parse_states(state), parse_wave(wave, view.get("waves") or [])
    rows = [r for r in view["rows"] if (not states or r["state"] in states) and (at is None or r["wave"] == at)
            and matches(r, text or "")]
    return {**view, "counts": counts(view["rows"]), "total": len(view["rows"]), "shown": len(rows), "rows": rows,
            "filters": {"state": states, "text": (text or "").strip(), "wave": at}}


# --- CSV -----------------------------------------------------------------------------------------

def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    # A spreadsheet runs a cell that starts like a formula; an error line is not ours to trust.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def to_csv(view: dict[str, Any]) -> str:
    """The rows as CSV (csv module, a header line, attributes as `k=v; k=v`)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for r in view["rows"]:
        values = {**r, "fleet": view.get("fleet"), "run_id": view.get("run_id"),
                  "attributes": "; ".join(f"{k}={v}" for k, v in sorted(r["attributes"].items()))}
        writer.writerow([_cell(values.get(c)) for c in CSV_COLUMNS])
    return out.getvalue()


def csv_filename(fleet: str, run_id: str) -> str:
    """fleet-<fleet>-<run id>.csv, with only letters, digits, '.', '_' and '-' (a header-safe name)."""
    from schema_deploy.backups.store import segment

    return f"fleet-{segment(fleet)}-{segment(run_id)}.csv"


# --- the records in S3 ----------------------------------------------------------------------------

def fleets_root(root: str) -> tuple[str, str]:
    """(bucket, key prefix of every fleet record) from the store's s3://BUCKET/PREFIX."""
    from schema_deploy.backups.store import parse_s3_uri

    bucket, prefix = parse_s3_uri(root)
    return bucket, f"{prefix}/fleets/" if prefix else "fleets/"


def record_keys(s3: Any, root: str, fleet: str | None = None) -> list[dict[str, Any]]:
    """Every fleet record's key under `root` (one fleet's when given), newest first."""
    from schema_deploy.backups.store import segment

    bucket, base = fleets_root(root)
    prefix = f"{base}{segment(fleet)}/runs/" if fleet else base
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            m = _RECORD_KEY.match(obj["Key"][len(base) - len("fleets/"):])
            if m:
                found.append({"key": obj["Key"], "fleet_segment": m["fleet"], "run_segment": m["run"],
                              "modified": obj["LastModified"].isoformat(), "uri": f"s3://{bucket}/{obj['Key']}"})
    return sorted(found, key=lambda k: (k["modified"], k["key"]), reverse=True)


def _get_json(s3: Any, uri: str) -> Any:
    from schema_deploy.backups.store import parse_s3_uri

    bucket, key = parse_s3_uri(uri)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    try:
        return json.loads(body)
    except ValueError as exc:
        raise NotAFleetRecord(uri, f"not JSON: {exc}") from None


def list_records(s3: Any, root: str, limit: int = 20) -> list[dict[str, Any]]:
    """The newest `limit` fleet runs with a record: fleet, run id, outcome, counts per view state."""
    runs = []
    for k in record_keys(s3, root)[:limit]:
        entry = {"fleet": k["fleet_segment"], "run_id": k["run_segment"], "source": "record", "uri": k["uri"],
                 "modified": k["modified"], "outcome": None, "counts": {}, "started": None, "error": None}
        try:
            view = view_of_record(_get_json(s3, k["uri"]), k["uri"])
            entry.update(fleet=view["fleet"], run_id=view["run_id"], outcome=view["outcome"],
                         started=view["started"], counts=counts(view["rows"]))
        except Exception as exc:  # one unreadable record is named in the list, never a failed page
            entry["error"] = scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        runs.append(entry)
    return runs


def read_record(s3: Any, root: str, fleet: str, run_id: str) -> dict[str, Any]:
    """One run's view from its record; a fleet or run without one is refused naming what exists."""
    from botocore.exceptions import ClientError

    from schema_deploy.backups.store import not_found, segment

    bucket, base = fleets_root(root)
    uri = f"s3://{bucket}/{base}{segment(fleet)}/runs/{segment(run_id)}/{RECORD_NAME}"
    try:
        return view_of_record(_get_json(s3, uri), uri)
    except ClientError as exc:
        if not not_found(exc):
            raise
    where = f"s3://{bucket}/{base}"
    runs = record_keys(s3, root, fleet)
    if runs:
        raise FleetRunNotFound(fleet, run_id, f"{where}{segment(fleet)}/runs/", [r["run_segment"] for r in runs])
    everything = record_keys(s3, root)
    if not everything:
        raise NoFleetRecords(where)
    raise FleetNotFound(fleet, where, sorted({r["fleet_segment"] for r in everything}))
