"""Backups in S3: taking them, verifying that they restore, listing, restoring and restoring over.

Owns: `store` (the S3 layout, manifests, managed transfers), `dump` (pg_dump → S3, verified by a
restore), `restore` (a backup into a database, with the refusals that keep data where it belongs),
`restore_over` (a rollback by restore, recorded in the audit chain), `errors`.
May import: every layer up to `audit`.
"""
