"""The human report of one deployment run, from its steps' results (`make demo`, `deploy`).

`render` takes each step's result as it travels (`to_xcom()`), keyed by step name
(`record.STEPS` plus "record"), with the steps' states and durations, and returns
plain text for a terminal.
"""
from __future__ import annotations

from typing import Any

from schema_deploy.pipeline.record import STEPS, production_result
from schema_deploy.pipeline.results import decision_text

ORDER = (*STEPS, "record")


def render(title: str, results: dict[str, Any], states: dict[str, str | None],
           seconds: dict[str, float | None], notes: dict[str, str] | None = None) -> list[str]:
    """The report's lines. `notes` may explain how the approval and the window were configured."""
    notes = notes or {}
    x = {name: results.get(name) or {} for name in ORDER}
    pre = x["preflight"]
    release = pre.get("release") or {}
    out = ["", "=" * 78, title, "=" * 78, "", "release"]
    out.append(f"  {release.get('short', '?')}  {release.get('uri', '(none)')}")
    out.append(f"  sha256 {release.get('sha256', '?')}  bundle {release.get('bundle', '?')}"
               + (f", git {str((release.get('source') or {}).get('git_commit'))[:12]}"
                  if (release.get("source") or {}).get("git_commit") else ""))
    out += ["", "migrations"]
    for m in pre.get("migrations", []):
        rewritten = sum(bool(s["rewritten"]) for s in m["steps"])
        out.append(f"  {m['name']}  sha256 {m['checksum'][:16]}…  {len(m['steps'])} steps, {rewritten} rewritten online")
    lint = pre.get("lint", {})
    out.append(f"  lint: {lint.get('errors', 0)} errors in the SQL as written, {lint.get('fixed_by_plan', 0)} fixed by "
               f"the online plan; prechecks: {len(pre.get('prechecks', []))} passed")
    out += ["", "steps (state, seconds)"]
    for name in ORDER:
        if name in states or name in seconds:
            took = seconds.get(name)
            out.append(f"  {name:<22} {str(states.get(name)):<16} {f'{took:8.2f}' if took is not None else '       -'}")
    b = x["backup"]
    out += ["", "backup", f"  {b.get('uri')}", f"  sha256 {b.get('sha256')}  {(b.get('size') or 0) / 1e6:.1f} MB, "
            f"{b.get('rows') or 0:,} rows, verified by {b.get('verified')}"]
    gate = x["gate"].get("gate", {})
    out += ["", "test gate (staging)"]
    for c in gate.get("commands", []):
        junit = c.get("junit") or {}
        out.append(f"  exit {c['exit_code']}  {c['seconds']:.1f} s  {junit.get('tests', '?')} tests, "
                   f"{len(junit.get('failed', []))} failing  {c['command']}")
    out += [f"  JUnit XML: {u}" for u in gate.get("junit", [])]
    staged = x["gate"].get("verification") or {}
    if x["gate"].get("outcome"):
        out.append(f"  gate: {x['gate']['outcome']}")
    out += verification_lines("staging verification", staged)
    a, w = x["approval"], x["window"]
    out += ["", "approval" + (f" ({notes['approval']})" if notes.get("approval") else ""),
            f"  {decision_text(a)} at {a.get('responded_at')} via {a.get('via', '?')} "
            f"(run triggered by {a.get('triggered_by')})" if a else "  none (not reached)",
            "", "maintenance window" + (f" ({notes['window']})" if notes.get("window") else "")]
    if w.get("skipped"):
        out.append(f"  skipped: {w.get('reason')}")
    elif w:
        out.append(f"  {w.get('window')}: waited {w.get('waited_s') or 0:.0f} s, open {w.get('opens')} → "
                   f"{w.get('closes')}; production needed {w.get('needed')}")
    else:
        out.append("  not reached")
    p, v = production_result(results) or {}, x["verification"]
    out += ["", "production apply",
            f"  {p.get('seconds')} s, {sum(len(m['steps']) for m in p.get('applied', []))} steps, "
            f"{p.get('lock_retries', 0)} lock retries"]
    out += backfill_lines(p.get("backfills") or []) + [""]
    out += verification_lines("verification (production; expectations from the plan, sql/verify, EXPLAIN "
                              "index usage)", v, heading=True)
    if v.get("rows_before"):
        out.append("  rows before → after:")
        for table, before in sorted(v.get("rows_before", {}).items()):
            out.append(f"    {table:<34} {before:>9,} → {v['rows_after'].get(table, 0):>9,}")
    if v.get("facts"):
        out.append("  facts against the plan's expectations" + (f" ({notes['facts']})" if notes.get("facts") else "")
                   + ":")
        out += [f"    {line}" for line in v.get("facts", [])]
    au = x["record"]
    out += ["", "audit trail",
            f"  outcome '{au.get('outcome')}', chained in " + (", ".join(
                f"{env} (row {c['id']}, {c['row_hash'][:16]}…)" for env, c in (au.get("chain") or {}).items())
                or "no database"),
            f"  record: {au.get('s3')} (sha256 {au.get('sha256')})"]
    return out


def backfill_lines(backfills: list[dict[str, Any]]) -> list[str]:
    """Each backfill's figures: rows, batches, time, WAL, and the health gate's pauses with their reasons."""
    out = []
    for b in backfills:
        mb = (b.get("wal_bytes_this_run") or 0) / (1024 * 1024)
        out.append(f"  backfill {b.get('id')} on {b.get('table')}: {b.get('state')}, {b.get('rows_done')} rows "
                   f"({b.get('rows_this_run')} this run in {b.get('batches_this_run')} batches), "
                   f"{b.get('seconds') or 0:.1f} s, WAL {mb:.1f} MB, {b.get('lock_retries') or 0} lock retries")
        pauses = b.get("pauses") or []
        out += [f"    paused {p.get('seconds', '?')} s for the database's health: {p.get('reason')}" for p in pauses]
        if not pauses:
            out.append("    the health gate let every batch go (no pause)")
    return out


def verification_lines(title: str, v: dict[str, Any], heading: bool = False) -> list[str]:
    """A verification's check counts, its criteria's summary (the line Slack, the approval page and
    the record carry) and one line per criterion."""
    from schema_deploy.engine.criteria import Verdicts
    from schema_deploy.pipeline.results import verification_counts

    head = [title] if heading else []
    indent = "  " if heading else "    "
    if not v:
        return head + [f"  {'' if heading else title + ': '}not run"]
    verdicts = Verdicts.from_list(v.get("criteria"))
    return head + [f"  {'' if heading else title + ': '}{verification_counts(v)}",
                   f"  success criteria: {v.get('verdict') or verdicts.summary()}"] + [
        f"{indent}{line}" for line in verdicts.lines()]
