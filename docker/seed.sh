#!/usr/bin/env bash
# One-shot (docker-compose service seed-databases): staging and production at the baseline
# migration, ledger written as Prisma writes it, plus the same deterministic rows in both
# (devstack/generate_data.py, demo preset, seed 42: what make demo and make airflow use), so
# deploy_schema has the Epic 5 migration to deploy and both schemas match. A database that has
# a migration ledger already is left alone: `docker compose up` again never resets what a
# deployment changed.
set -euo pipefail
cd "$(dirname "$0")/.."   # the repository (mounted at /opt/schema-deploy)
baseline=20250915090000_baseline
for target in staging production; do
  var="${target^^}_DATABASE_URL"
  url="${!var:?$var is not set}"
  rc=0
  python - "$url" <<'PY' || rc=$?
import sys
import psycopg
with psycopg.connect(sys.argv[1], connect_timeout=10) as conn:
    has_ledger = conn.execute("SELECT to_regclass('public._prisma_migrations') IS NOT NULL").fetchone()[0]
sys.exit(0 if has_ledger else 10)
PY
  case $rc in
    0) echo "$target: has a migration ledger already; left as it is"; continue ;;
    10) ;;
    *) echo "$target: could not read the database (exit $rc)" >&2; exit 1 ;;
  esac
  echo "$target: applying $baseline and generating demo rows"
  python -m schema_deploy apply --migrations sql/migrations --db "$url" --to "$baseline"
  python devstack/generate_data.py --db "$url" --preset demo --seed 42
done
