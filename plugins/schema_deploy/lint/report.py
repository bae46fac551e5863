"""Lint findings where code review reads them: SARIF 2.1.0 and GitHub workflow annotations.

* `sarif(findings, rules)`: one SARIF 2.1.0 log (OASIS standard, the schema GitHub code
  scanning and most review tools read) with one run, the rules that fired as its driver's
  rules (id, summary, default level, help), and one result per finding: rule id, level,
  message, file and line, the fix in `properties.help`, and a suppressed finding as a result
  with an in-source suppression carrying its reason.
* `github(findings)`: one `::error`/`::warning`/`::notice` workflow command per unsuppressed
  finding, so a GitHub Actions step annotates the pull request's files.

Paths are made relative to the current folder when they lie under it (a review tool
resolves them against the repository's root, where the hook or the CI step runs).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
LEVELS = {"error": "error", "warning": "warning", "info": "note"}
ANNOTATIONS = {"error": "error", "warning": "warning", "info": "notice"}


def relative(path: str) -> str:
    """`path` relative to the current folder when it lies under it, with forward slashes."""
    p = Path(path)
    try:
        p = p.resolve().relative_to(Path.cwd().resolve())
    except (ValueError, OSError):
        pass
    return p.as_posix()


def sarif(findings: list[Any], rules: dict[str, Any]) -> dict[str, Any]:
    """A SARIF 2.1.0 log of `findings` (lint.Finding); `rules`: the registry (id -> Rule) for descriptions."""
    fired = sorted({f.rule for f in findings})
    index = {rid: i for i, rid in enumerate(fired)}
    descriptors = []
    for rid in fired:
        rule = rules.get(rid)
        summary = rule.summary if rule is not None else "The migration file cannot be deployed as written"
        level = LEVELS[rule.severity] if rule is not None else "error"
        descriptors.append({"id": rid, "name": rid, "shortDescription": {"text": summary},
                            "defaultConfiguration": {"level": level}})
    results = []
    for f in findings:
        result: dict[str, Any] = {
            "ruleId": f.rule, "ruleIndex": index[f.rule], "level": LEVELS.get(f.severity, "note"),
            "message": {"text": f.message},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": relative(f.path)},
                                                "region": {"startLine": max(1, f.line)}}}],
            "properties": {"help": f.help, "severity": f.severity, "migration": f.migration},
        }
        if f.suppressed:
            result["suppressions"] = [{"kind": "inSource", "justification": f.reason or ""}]
        results.append(result)
    return {"$schema": SARIF_SCHEMA, "version": "2.1.0",
            "runs": [{"tool": {"driver": {"name": "schema-deploy", "rules": descriptors}},
                      "results": results}]}


def sarif_text(findings: list[Any], rules: dict[str, Any]) -> str:
    return json.dumps(sarif(findings, rules), indent=2)


def _data(text: str) -> str:
    """Escape a workflow command's message (GitHub: %, CR and LF)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _property(text: str) -> str:
    """Escape a workflow command's property value (also ':' and ',')."""
    return _data(text).replace(":", "%3A").replace(",", "%2C")


def github(findings: list[Any]) -> str:
    """GitHub Actions workflow commands, one per unsuppressed finding (suppressed ones were accepted)."""
    lines = []
    for f in findings:
        if f.suppressed:
            continue
        kind = ANNOTATIONS.get(f.severity, "notice")
        lines.append(f"::{kind} file={_property(relative(f.path))},line={max(1, f.line)},"
                     f"title={_property(f'schema-deploy {f.rule}')}::{_data(f'{f.message}. Fix: {f.help}')}")
    return "\n".join(lines)
