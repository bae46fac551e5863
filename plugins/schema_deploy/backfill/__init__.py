"""Backfills: data changes declared beside a migration (`backfill.yaml`), run in keyset batches that
are throttled by a WAL budget and the health gate, and checkpointed in the target's
`schema_deploy.backfills` (see docs/backfills.md).

Owns: `spec` (the file, read and checked: `BackfillSpec`), `engine` (`Runner`: batches, pacing, retries on
row locks, pauses), `checkpoint` (the progress row, operators' pause/resume/cancel), `contract` (a
migration after a backfill needs it done), `errors`.
May import: `errors`, `pg`, `health`.
"""
