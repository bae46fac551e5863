"""Backup verbs (boto3 is imported only by these): backup, verify-backup, restore, backups."""
from __future__ import annotations

import argparse

from schema_deploy.cli.common import database_url, emit, say
from schema_deploy.config.durations import parse_duration
from schema_deploy.errors import UsageError


def _rows_text(counts: dict[str, int], how: str) -> list[str]:
    lines = [f"rows     {sum(counts.values()):,} in {len(counts)} tables ({how})"]
    lines += [f"  {table:<50} {n:>14,}" for table, n in sorted(counts.items())]
    return lines


def cmd_backup(args: argparse.Namespace) -> int:
    """Stream pg_dump -Fc of --db to S3 (multipart, SSE, sha256, manifest), then verify it."""
    from schema_deploy.backups.dump import backup
    from schema_deploy.backups.restore import verify_backup
    from schema_deploy.backups.store import default_s3_client

    url, s3 = database_url(args), default_s3_client()
    result = backup(s3, url, args.to, environment=args.environment, run_id=args.run_id, sse=args.sse,
                    kms_key_id=args.kms_key_id, log=say)
    check = None
    if not args.no_verify:
        check = verify_backup(s3, result.uri, restore_check=args.restore_check,
                              admin_url=url if args.restore_check else None, log=say)
    how = ("exact, in the dump's snapshot; equal after a test restore" if args.restore_check
           else "exact, in the dump's snapshot")
    lines = [f"backup   {result.uri}", f"manifest s3://{result.bucket}/{result.manifest_key}",
             f"size     {result.size:,} bytes in {result.parts} part(s)", f"sha256   {result.sha256}",
             f"sse      {result.manifest['sse']['mode']}" + (f" ({result.manifest['sse']['kms_key_id']})"
                                                            if result.manifest["sse"]["kms_key_id"] else ""),
             f"verified {check.method + ' ok' if check else 'no (--no-verify)'}"]
    emit(args, {**result.as_dict(), "verification": check.record if check else None},
         "\n".join(lines + _rows_text(result.row_counts, how)))
    return 0


def cmd_verify_backup(args: argparse.Namespace) -> int:
    """Check a backup's size, sha256 and table of contents against its manifest; with
    --restore-check, restore it into a scratch database on --db's server and compare row counts."""
    from schema_deploy.backups.restore import verify_backup
    from schema_deploy.backups.store import default_s3_client

    url = database_url(args) if args.restore_check else None
    check = verify_backup(default_s3_client(), args.uri, restore_check=args.restore_check, admin_url=url, log=say)
    lines = [f"verified {check.uri}: {check.method} ok"]
    if check.row_counts is not None:
        lines += _rows_text(check.row_counts, "restored into a scratch database, equal to the manifest")
    emit(args, check.as_dict(), "\n".join(lines))
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """Restore a backup into an existing database, streaming from S3 in one transaction."""
    from schema_deploy.backups.restore import restore
    from schema_deploy.backups.store import default_s3_client

    result = restore(default_s3_client(), args.source, database_url(args), clean=args.clean, jobs=args.jobs,
                     force=args.force, confirm_production=args.confirm_production,
                     environment=args.environment, log=say, allow_other_source=args.allow_other_source)
    crossed = [f"{result.other_source['fact']} (--allow-other-source)"] if result.other_source else []
    emit(args, result.as_dict(), "\n".join([f"restored {result.uri} into {result.database} in {result.seconds:.1f} s"]
                                           + crossed + _rows_text(result.row_counts, "equal to the manifest")))
    return 0


def cmd_backups(args: argparse.Namespace) -> int:
    """List the backups under --to (complete or not, verified or not), or prune old ones."""
    from schema_deploy.backups.store import default_s3_client, list_backups, prune

    s3 = default_s3_client()
    if args.action == "list":
        entries = list_backups(s3, args.to)
        lines = [f"{'created (UTC)':<20} {'state':<24} {'verified':<9} {'size':>14}  uri"]
        lines += [f"{e.created.strftime('%Y-%m-%d %H:%M:%S'):<20} {e.state:<24} {'yes' if e.verified else 'no':<9} "
                  f"{(e.as_dict()['size'] or 0):>14,}  {e.uri}" for e in entries]
        emit(args, [e.as_dict() for e in entries], "\n".join(lines) if entries else "no backups")
        return 0
    if args.keep is None:
        raise UsageError("backups prune needs --keep N (how many of the newest complete backups to keep).")
    older = parse_duration(args.older_than, "--older-than") if args.older_than else None
    decisions = prune(s3, args.to, keep=args.keep, older_than=older, dry_run=args.dry_run)
    verb_ = "would delete" if args.dry_run else "deleted"
    emit(args, [d.as_dict() for d in decisions],
         "\n".join(f"{verb_ if d.delete else 'keep':<12} {d.entry.uri}  ({d.reason})" for d in decisions)
         or "no backups")
    return 0
