"""What a database says has run: Prisma's `_prisma_migrations` ledger and each migration's state.

Owns: `ledger` (the ledger table as Prisma creates it, its rows, Prisma's advisory lock), `status`
(applied, pending, failed, drifted, interrupted), `errors`.
May import: `errors`, `pg`, `bundle`.
"""
