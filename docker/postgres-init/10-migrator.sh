#!/usr/bin/env bash
# Runs once, when the target's data volume is first initialised (docker-entrypoint-initdb.d):
# the role deployments connect as -- not a superuser, so the audit table's revoked grants
# hold for it -- and the application database it owns. CREATEDB: the backup's restore check
# restores into a scratch database. With MIGRATOR_READS_STATS=true (production's target), also
# pg_read_all_stats: the health gate reads replication and other sessions' statistics there. The
# password goes in through a psql variable, not argv.
set -euo pipefail
: "${MIGRATOR_PASSWORD:?MIGRATOR_PASSWORD is not set}" "${APP_DATABASE:?APP_DATABASE is not set}"
psql -X -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v pw="$MIGRATOR_PASSWORD" -v db="$APP_DATABASE" -v stats="${MIGRATOR_READS_STATS:-false}" <<'SQL'
SELECT format('CREATE ROLE migrator LOGIN CREATEDB PASSWORD %L', :'pw')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'migrator') \gexec
SELECT 'GRANT pg_read_all_stats TO migrator' WHERE :'stats' = 'true' \gexec
SELECT format('CREATE DATABASE %I OWNER migrator', :'db')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SQL
