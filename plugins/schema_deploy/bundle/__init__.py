"""A migrations folder as a bundle: which files, in what order, with which checksums, and their SQL.

Owns: `discover` (Prisma folders or plain .sql files → `Bundle`, checksums as Prisma computes them,
`load_declared` for deploy.yaml's named bundles), `parse` (PostgreSQL's parser through pglast:
statements, their locks, transaction needs), `fastparse`, `splitter` (what Prisma's script splitter
would do), `blocks` (explicit transaction blocks), `errors` (files that cannot be deployed as written).
May import: `errors` (and `config` for type hints only). No database session: files only.
"""
