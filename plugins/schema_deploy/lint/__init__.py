"""Lint: statements that lock, rewrite, lose data or break the running application, found in the files.

Owns: `engine` (`lint_bundle`, `lint_sql`, findings, suppressions), `config` (deploy.yaml's `lint:`
severities, rule ids checked against the registry), `registry` (rules as functions named after their
ids), `rules/` (one module per rule family: locks, hygiene, prisma), `report` (text, JSON, SARIF), `errors`.
May import: `errors`, `config`, `pg.names` (not the driver), `bundle`.
"""
