#!/usr/bin/env bash
# Write docker/.env from docker/.env.example with a fresh random value for every placeholder,
# so the stack never runs on example secrets. Refuses to overwrite an existing file.
#   docker/new-env.sh [OUTPUT]     (default: docker/.env)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/.env}
if [ -e "$out" ]; then
  echo "$out exists already; remove it first to make new secrets" >&2
  exit 2
fi
rand_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
rand_b64() { head -c 32 /dev/urandom | base64 | tr -d '\n'; }
umask 077
while IFS= read -r line || [ -n "$line" ]; do
  case $line in
    AIRFLOW_FERNET_KEY=*) line="AIRFLOW_FERNET_KEY=$(rand_b64 | tr '+/' '-_')" ;;
    MINIO_KMS_SECRET_KEY=*) line="MINIO_KMS_SECRET_KEY=schema-deploy:$(rand_b64)" ;;
    AIRFLOW_CONN_SLACK_DEPLOYS=*) line=${line/\/changeme\"/\/$(rand_hex 12)\"} ;;
    MINIO_ROOT_USER=*|BACKUP_S3_ACCESS_KEY=*) line="${line%%=*}=$(rand_hex 8)" ;;    # MinIO: 3-20 characters
    MINIO_ROOT_PASSWORD=*|BACKUP_S3_SECRET_KEY=*) line="${line%%=*}=$(rand_hex 16)" ;;  # MinIO: 8-40 characters
    [A-Z]*=change-me*) line="${line%%=*}=$(rand_hex 24)" ;;
  esac
  printf '%s\n' "$line"
done < "$here/.env.example" > "$out"
echo "wrote $out (mode 600): keep it out of version control; the UI login is in AIRFLOW_ADMIN_USER/_PASSWORD" >&2
