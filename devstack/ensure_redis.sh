#!/usr/bin/env bash
# Make sure redis-server (7.x, the Celery broker of `make airflow EXECUTOR=celery` and the Celery tests)
# is present. As root on Debian, install it from Debian's packages; otherwise say what to do.
set -euo pipefail
if [ -n "${REDIS_SERVER:-}" ] && [ -x "$REDIS_SERVER" ]; then exit 0; fi
if command -v redis-server >/dev/null; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "redis-server (the Celery broker) was not found." >&2
  echo "Install it with: sudo apt-get install redis-server" >&2
  echo "or set REDIS_SERVER to the path of a redis-server binary, then run make again." >&2
  exit 2
fi
echo "installing redis-server from Debian's packages..." >&2
export DEBIAN_FRONTEND=noninteractive
# Keep the package from starting its own system-wide server: the stack runs its own, on its own port.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1; fi
trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends redis-server >/dev/null
command -v redis-server >/dev/null || { echo "install finished but redis-server is still missing" >&2; exit 2; }
