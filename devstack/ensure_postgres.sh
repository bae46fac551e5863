#!/usr/bin/env bash
# Make sure PostgreSQL 15 server binaries are present (initdb, pg_ctl, pg_dump).
# As root on Debian, install them from Debian's packages; otherwise say what to do.
set -euo pipefail
if [ -n "${PG_BINDIR:-}" ] && [ -x "$PG_BINDIR/pg_ctl" ]; then exit 0; fi
if compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null; then exit 0; fi
if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "PostgreSQL server binaries (pg_ctl, initdb) were not found." >&2
  echo "Install them with: sudo apt-get install postgresql-15 postgresql-client-15" >&2
  echo "or set PG_BINDIR to the directory that holds pg_ctl, then run make again." >&2
  exit 2
fi
echo "installing PostgreSQL 15 from Debian's packages..." >&2
export DEBIAN_FRONTEND=noninteractive
# Keep the package from starting its own 'main' cluster: the stack runs its own.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1; fi
trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql-15 postgresql-client-15 >/dev/null
compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || { echo "install finished but pg_ctl is still missing" >&2; exit 2; }
