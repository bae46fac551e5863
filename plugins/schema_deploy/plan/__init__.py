"""What would run, and whether it may: plans of the pending migrations, before anything changes.

Owns: `planner` (plans from a bundle and a database's status, drift and ledger refusals), `steps`
(planned statements and steps), `online` (online rewrites of blocking statements), `prechecks`
(data prechecks: orphans, duplicates, NULLs), `prisma_check` (schema.prisma against the migrations),
`errors`.
May import: `redact`, `errors`, `pg`, `backfill`, `bundle`, `state`.
"""
