"""Errors of config/: deploy.yaml that cannot be used as written, and a bundle name it does not declare."""
from __future__ import annotations

from pathlib import Path

from schema_deploy.errors import SchemaDeployError, UsageError


class ConfigError(SchemaDeployError):
    """A configuration file (deploy.yaml) that cannot be used as written."""

    def __init__(self, path: Path | str, problem: str, fix: str) -> None:
        self.path, self.problem, self.fix = Path(path), problem, fix
        super().__init__(f"{path}: {problem}. {fix}")


class BundleNotDeclared(UsageError):
    """A trigger-form or command-line bundle that is not one of deploy.yaml's declared bundles."""

    def __init__(self, given: str, declared: list[str], source: str) -> None:
        self.given, self.declared = given, declared
        what = ("is a path" if given.startswith("/") or "/" in given or ".." in given or "\\" in given
                else "is not declared")
        super().__init__(
            f"bundle {given!r} {what}: a deployment takes one of the bundles declared under 'bundles:' in "
            f"{source}, by name: {', '.join(declared)}. Pick one of them, or declare the folder there first.")
