#!/usr/bin/env bash
# Make sure redis-server (7.x: the Celery broker of `make airflow EXECUTOR=celery` and of the Celery
# tests) is present. As root on Debian, install it from Debian's packages; otherwise say what to do.
set -euo pipefail
if [ -n "${REDIS_SERVER:-}" ] && [ -x "$REDIS_SERVER" ]; then exit 0; fi
if command -v redis-server >/dev/null; then exit 0; fi
. "$(dirname "$0")/debian_install.sh"
debian_install "redis-server (the Celery broker)" "Or set REDIS_SERVER to the path of a redis-server binary." redis-server
command -v redis-server >/dev/null || { echo "install finished but redis-server is still missing" >&2; exit 2; }
