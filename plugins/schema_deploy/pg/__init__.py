"""PostgreSQL: the one home for connecting and for what every layer needs from a server.

Owns: `db` (sessions with timeouts and application name, identifiers, relation lookups, the blocker
query, password masking), `names` (quoting without a driver, for lint), `tools` (pg_dump, pg_restore,
creating and dropping databases), `fingerprint` (a schema's fingerprint and its diff), `retry`
(the timeouts and lock-retry schedule), `errors`.
May import: `redact`, `errors`.
"""
