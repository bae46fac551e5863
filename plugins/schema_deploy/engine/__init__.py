"""Running migrations against one database: apply, resolve, down migrations, and verifying the result.

Owns: `apply` (a plan applied under Prisma's lock, resumable, with lock retries), `resolve`
(`migrate resolve`), `down` (rollback by down.sql), `verify` (expectations after a change), `criteria`
(one verdict per criterion), `errors`.
May import: every layer up to `plan`.
"""
