#!/usr/bin/env bash
# Make sure PostgreSQL 15 server binaries are present (initdb, pg_ctl, pg_dump).
# As root on Debian, install them from Debian's packages; otherwise say what to do.
set -euo pipefail
if [ -n "${PG_BINDIR:-}" ] && [ -x "$PG_BINDIR/pg_ctl" ]; then exit 0; fi
if compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null; then exit 0; fi
if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then exit 0; fi
. "$(dirname "$0")/debian_install.sh"
# The package would start its own 'main' cluster; debian_install keeps it from doing so.
debian_install "PostgreSQL server binaries (pg_ctl, initdb)" "Or set PG_BINDIR to the directory that holds pg_ctl." \
  postgresql-15 postgresql-client-15
compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || { echo "install finished but pg_ctl is still missing" >&2; exit 2; }
