#!/usr/bin/env bash
# Make sure a `docker-compose` that can validate docker-compose.yaml is present
# (`docker-compose config -q` needs no Docker engine). As root on Debian, install
# Debian's docker-compose (1.29, Python) without the engine it recommends;
# otherwise say what to do.
set -euo pipefail
if command -v docker-compose >/dev/null; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "docker-compose was not found (the compose-file tests use it to validate docker-compose.yaml)." >&2
  echo "Install it with: sudo apt-get install --no-install-recommends docker-compose" >&2
  echo "(no Docker engine is needed), then run make again." >&2
  exit 2
fi
echo "installing docker-compose from Debian's packages (no engine)..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
command -v docker-compose >/dev/null || { echo "install finished but docker-compose is still missing" >&2; exit 2; }
