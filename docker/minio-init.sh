#!/bin/sh
# One-shot (docker-compose service minio-init, image minio/mc; MC_HOST_local holds the root
# credentials): the backup bucket, versioned, and an access key whose policy allows that bucket
# only -- the key the backup_s3 connection holds. Safe to run again.
set -eu
: "${BACKUP_BUCKET:?}" "${BACKUP_S3_ACCESS_KEY:?}" "${BACKUP_S3_SECRET_KEY:?}"
mc mb --ignore-existing "local/$BACKUP_BUCKET"
mc version enable "local/$BACKUP_BUCKET"
cat > /tmp/backup-policy.json <<JSON
{"Version": "2012-10-17",
 "Statement": [{"Effect": "Allow", "Action": ["s3:*"],
                "Resource": ["arn:aws:s3:::$BACKUP_BUCKET", "arn:aws:s3:::$BACKUP_BUCKET/*"]}]}
JSON
mc admin policy create local schema-deploy-backups /tmp/backup-policy.json
mc admin user add local "$BACKUP_S3_ACCESS_KEY" "$BACKUP_S3_SECRET_KEY"
# attach fails when the policy is attached already (a second `up`): then check it is.
mc admin policy attach local schema-deploy-backups --user "$BACKUP_S3_ACCESS_KEY" \
  || mc admin user info local "$BACKUP_S3_ACCESS_KEY" | grep -q schema-deploy-backups
echo "bucket $BACKUP_BUCKET ready; access key $BACKUP_S3_ACCESS_KEY may use it"
