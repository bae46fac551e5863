"""schema_deploy: PostgreSQL schema-migration deployments (no Airflow imports here).

Modules, one per concern: bundle (discover migrations), parse (pglast statements
and their locks), ledger (Prisma's `_prisma_migrations` and advisory lock),
status, plan, apply, resolve, errors, cli.
"""
