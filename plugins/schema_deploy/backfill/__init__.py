"""Backfills: data changes declared beside a migration (`backfill.yaml`), run in keyset batches that are
throttled by a WAL budget and the health gate, and checkpointed in the target's `schema_deploy.backfills`.
No Airflow here: `spec` reads the file, `engine` runs it, `checkpoint` keeps its progress."""
