"""schema_deploy: PostgreSQL schema-migration deployments, without Airflow.

Subpackages, lowest layer first. A module imports only from its own subpackage and the layers
below it (never above), and nothing here imports Airflow; `tests/unit/test_layers.py` walks the
runtime imports and fails on an upward import or a cycle::

    redact     scrubbing passwords and tokens out of text (a leaf)
    errors     the root exception and the message helpers every message uses
    config     deploy.yaml: typed settings, fleets, maintenance-window specs, the duration grammar
    retrying   the one retry helper for transient I/O (tenacity), each call site's policy as data
    pg         PostgreSQL sessions, identifiers, client tools, fingerprints, lock-retry timing
    health     the health gate before online steps: replica lag, WAL rate, autovacuum, lock waiters, xmin
    backfill   declared data changes (backfill.yaml): checkpointed keyset batches, contract checks
    bundle     a migrations folder: discovery, checksums, parsing, Prisma's splitter, blocks
    lint       static checks of migration files: engine, its config, registry, rules by family
    state      what a database has run: Prisma's `_prisma_migrations` ledger, per-migration status
    plan       what would run: plans, online rewrites, data prechecks, the schema.prisma check
    engine     running it: apply, resolve, down migrations, verification and its criteria
    audit      the hash-chained audit record
    backups    backups in S3: store, dump, verify, restore, restore-over (which records itself)
    ops        around a deployment: releases, maintenance-window slots, the test gate, Slack
    pipeline   the deploy, fleet and rollback pipelines: one function per step, typed results
    views      what the Schema deployments page and the fleet view show
    cli        `python -m schema_deploy <verb>`

Why this order: the ledger (`state`) sits below `plan` because a plan is made from a database's
status; `audit` sits below `backups` because restoring over a database records itself; `ops`
sits above `backups` because a release is stored beside the backups; `retrying` imports only
`errors` and sits as low as it can, so every layer that does I/O may use it. Each subpackage's
`__init__` says what it owns and what it may import; each keeps its own error conditions in its
`errors.py`, under the root in `errors`.
"""
