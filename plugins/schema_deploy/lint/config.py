"""Lint's own configuration: deploy.yaml's `lint:` severities, their rule ids checked against the registry.

`config` reads the file and checks the section's form (it never imports lint, which brings pglast);
the rule ids are lint's to check, because only the registry knows them. `Run.start` checks them
before any file is linted, so a typo in deploy.yaml stops `lint`, preflight and the CLI alike.
"""
from __future__ import annotations

import difflib
from pathlib import Path

from schema_deploy.config.errors import ConfigError
from schema_deploy.config.messages import described
from schema_deploy.config.settings import LintConfig, lint_section
from schema_deploy.lint.registry import RULES

DEFAULT_CONFIG = "deploy.yaml"


def checked(config: LintConfig) -> LintConfig:
    """`config`, once every rule id it names is one the registry has."""
    for rid in config.severity:
        if rid not in RULES:
            close = difflib.get_close_matches(str(rid), RULES, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(config.source or DEFAULT_CONFIG, f"lint.severity: unknown rule id {rid!r}{hint}",
                              f"Valid rule ids: {', '.join(sorted(RULES))}.")
    return config


def config_from(data: object, path: Path | str = DEFAULT_CONFIG, *, prisma_deploys: bool = False) -> LintConfig:
    """The lint settings of a parsed deploy.yaml, checked in form and rule ids. `prisma_deploys`:
    deploy.yaml's prisma.deploys, as `config.settings.load` read it."""
    if data is None:
        return LintConfig(source=str(path))
    if not isinstance(data, dict):
        raise ConfigError(path, f"expected a mapping of settings at the top level, got {described(data)}",
                          "See deploy.yaml in the repository for the layout.")
    return checked(lint_section(data.get("lint"), path, prisma_deploys=prisma_deploys))
