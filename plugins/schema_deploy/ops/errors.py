"""Errors of ops/: releases and the staging test gate."""
from __future__ import annotations

from schema_deploy.errors import SchemaDeployError


class ReleaseError(SchemaDeployError):
    """A release that cannot be used; nothing was changed."""

    exit_code = 1


class ReleaseMissing(ReleaseError):
    def __init__(self, uri: str) -> None:
        self.uri = uri
        super().__init__(
            f"release {uri} does not exist (deleted, or a wrong bucket/prefix). Nothing was changed. Trigger a new "
            "run (its preflight freezes a new release), or pass the URI `release create` printed.")


class ReleaseTampered(ReleaseError):
    def __init__(self, uri: str, actual: str) -> None:
        self.uri, self.actual = uri, actual
        super().__init__(
            f"release {uri} was changed after it was written: its bytes hash to sha256 {actual}, not to its name. "
            "Nothing was changed. Find out who wrote to the releases prefix (S3 access logs); trigger a new run "
            "to freeze a new release.")


class ReleaseInvalid(ReleaseError):
    def __init__(self, where: str, problem: str, fix: str) -> None:
        self.where, self.problem, self.fix = where, problem, fix
        super().__init__(f"release {where}: {problem}. Nothing was changed. {fix}")


class GateFailed(SchemaDeployError):
    exit_code = 1

    def __init__(self, failed: list) -> None:  # gate.CommandResult
        self.results = failed
        lines = []
        for r in failed:
            names = r.junit.failed if r.junit else []
            lines.append(f"`{r.command}` exited {r.exit_code}"
                         + (f"; failing tests: {', '.join(names[:20])}" if names else "")
                         + f"\n{r.output_tail[-1500:]}")
        super().__init__("the staging test gate failed, so production was not touched.\n" + "\n".join(lines)
                         + "\nFix the migration or the tests, then run the gate again (in Airflow: clear its task; staging keeps the change).")
