"""Errors of lint/: a lint that blocks a deployment."""
from __future__ import annotations

from schema_deploy.errors import SchemaDeployError


class LintBlocked(SchemaDeployError):
    """Lint errors that the plan about to run does not fix (preflight stops on them)."""

    exit_code = 1

    def __init__(self, findings: list) -> None:
        self.findings = findings
        lines = [f"- {f.where}: [{f.rule}] {f.message} Fix: {f.help}" for f in findings[:20]]
        more = f"\n…and {len(findings) - 20} more" if len(findings) > 20 else ""
        super().__init__(f"{len(findings)} lint error(s) that the deployment plan does not fix; nothing was "
                         "changed:\n" + "\n".join(lines) + more
                         + "\nFix the SQL, or suppress a finding with a '-- schema-deploy: ignore <rule> <reason>' "
                           "comment right above the statement.")
