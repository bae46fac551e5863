"""The audit trail verb: audit verify, audit export."""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone

from schema_deploy.cli.common import connect, database_url, emit
from schema_deploy.errors import UsageError


def _since(text: str) -> datetime:
    """--since: an ISO date or date-time; UTC unless it carries an offset."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since {text!r} is not an ISO date or time; expected e.g. 2026-11-01, "
                         "2026-11-01T09:30 or 2026-11-01T09:30:00+01:00 (UTC unless an offset is given).") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def cmd_audit(args: argparse.Namespace) -> int:
    """`audit verify` walks the hash chain of the database's audit trail (schema_deploy.audit_events)
    and names the first row whose hash does not hold; `audit export` prints the rows recorded since a
    date, with their hashes, as JSON or CSV. Neither changes anything."""
    from schema_deploy.audit import chain

    if args.action == "verify":
        if args.since or args.format:
            raise UsageError("--since and --format belong to `audit export`; `audit verify` always walks the "
                             "whole chain.")
        with connect(database_url(args)) as conn:
            report = chain.verify_chain(conn)
        emit(args, report.as_dict(), report.message)
        return 0 if report.ok else 1
    fmt = args.format or "json"
    if args.json and fmt != "json":
        raise UsageError(f"--json and --format {fmt} contradict each other; pass one of them.")
    since = _since(args.since) if args.since else None
    with connect(database_url(args)) as conn:
        text = chain.export(conn, since, fmt)
    sys.stdout.write(text)  # as stored: payloads were scrubbed when appended, and must match their hashes
    return 0
