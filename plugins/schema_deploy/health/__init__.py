"""The health gate: is production healthy enough for the next online step?

Every online step (a concurrent index build, a constraint validation) writes WAL that each replica must
replay, or scans a table while the application writes to it. Before such a step in production the gate
reads, from the primary:

* **replica replay lag** in bytes (`pg_stat_replication`: the primary's WAL position minus what each
  replica replayed). Its `replay_lag` in seconds is shown beside it and never gated: PostgreSQL times
  the replies of a replica that replays, so a paused or stuck replay keeps showing its last figure (or
  none) while the bytes grow.
* **WAL rate**: bytes of WAL the whole cluster wrote per second, from two readings of
  `pg_current_wal_lsn()`.
* **autovacuum on a table the step touches**: only an autovacuum "to prevent wraparound" holds the
  step back. A plain autovacuum cancels itself when a conflicting lock is asked for, so the step goes
  ahead; a wraparound one does not give way, so the step would queue behind it (and every query on the
  table behind the step), and cancelling it would only postpone the vacuum the database needs.
* **sessions waiting on locks our session holds** (advisory locks aside: another deployment waiting
  for the migration lock is no reason to stop).
* **the oldest open transaction** holding back the xmin horizon: while it runs, vacuum cannot clean up
  what the step and the application write meanwhile.

Reading other roles' rows of `pg_stat_replication` and `pg_stat_activity` needs `pg_read_all_stats`
(or a superuser): without it the gate refuses to start, naming the GRANT, instead of passing on NULLs.
`gate.HealthGate` waits until every signal is under its threshold (`HealthSettings`), bounded by a
maximum wait, and measures each step: the WAL it wrote (LSN difference) and the peak replica lag.

Owns: `gate` (`HealthGate`, `Decision`, `StepHealth`), `signals` (one query per signal, judged as a
`Reading`), `errors`. Its thresholds are `config.health.HealthSettings`.
May import: `redact`, `errors`, `config`, `pg`.
"""
