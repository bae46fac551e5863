#!/usr/bin/env bash
# Make sure a `docker-compose` that can validate docker-compose.yaml is present
# (`docker-compose config -q` needs no Docker engine). As root on Debian, install
# Debian's docker-compose (1.29, Python) without the engine it recommends;
# otherwise say what to do.
set -euo pipefail
if command -v docker-compose >/dev/null; then exit 0; fi
. "$(dirname "$0")/debian_install.sh"
debian_install "docker-compose (the compose-file tests use it to validate docker-compose.yaml)" \
  "(No Docker engine is needed.)" docker-compose
command -v docker-compose >/dev/null || { echo "install finished but docker-compose is still missing" >&2; exit 2; }
