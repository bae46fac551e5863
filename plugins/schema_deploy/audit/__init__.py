"""The audit record: an append-only, hash-chained table in each changed database, and its export.

Owns: `chain` (the table, its protection, appending, verifying and exporting the chain), `errors`.
May import: `redact`, `errors`. It sits below `backups` because restoring a backup
over a database records itself in the chain.
"""
