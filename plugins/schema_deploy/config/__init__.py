"""deploy.yaml, read once into typed settings: bundles, backups, gates, approvals, windows, fleets.

Owns: `settings` (`load`, `DeployConfig`, `LintConfig`), `model` (the pydantic sections that check
each key), `messages` (how a bad key or value is worded), `fleets` (fleet specs and waves),
`windows` (the maintenance-window spec), `durations` (the one duration grammar), `health` (the health
gate's thresholds), `errors`.
May import: `redact`, `errors`. It never imports lint (whose rule ids `lint.config` checks) nor
anything that needs a database: DAG files read deploy.yaml at parse time.
"""
