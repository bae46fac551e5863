"""The S3 side of backups: URIs and key layout, bucket checks, manifests, listing, pruning.

Layout under `s3://BUCKET/PREFIX`:

    <prefix>/<environment>/<database>/<YYYYmmddTHHMMSSZ>_<run id>.dump            the pg_dump -Fc archive
    <prefix>/<environment>/<database>/<YYYYmmddTHHMMSSZ>_<run id>.manifest.json   written last

A dump without its manifest is an incomplete backup: it never counts as good.
Every function takes a boto3 S3 client, so the Airflow glue can pass
`S3Hook(aws_conn_id="backup_s3").get_conn()` and the CLI a client built from
boto3's standard environment (`default_s3_client`).
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from schema_deploy.backups.errors import BucketCheckFailed, S3TransferFailed
from schema_deploy.errors import UsageError

Log = Callable[[str], None]
DUMP_SUFFIX = ".dump"
MANIFEST_SUFFIX = ".manifest.json"
SSE_MODES = ("AES256", "aws:kms")
PAB_FLAGS = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
# An incomplete backup this young may still be uploading; prune leaves it alone.
INCOMPLETE_GRACE = timedelta(hours=1)
_KEY_RE = re.compile(r"^(?P<env>[^/]+)/(?P<db>[^/]+)/(?P<ts>\d{8}T\d{6}Z)_(?P<run>[^/]+?)"
                     r"(?P<suffix>\.dump|\.manifest\.json)$")
_SEGMENT_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"


def default_s3_client() -> Any:
    """An S3 client from boto3's standard environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...),
    path-style addressing so local and S3-compatible endpoints work."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client("s3", config=Config(
        s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=10, read_timeout=120))


# --- URIs and keys ------------------------------------------------------------------

def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> ('bucket', 'some/key'); the key may be empty."""
    if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
        raise UsageError(f"{uri!r} is not an S3 URI; expected s3://BUCKET/PREFIX (or s3://BUCKET/…/X.dump).")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key.strip("/")


def parse_dump_uri(uri: str) -> tuple[str, str]:
    bucket, key = parse_s3_uri(uri)
    if not key.endswith(DUMP_SUFFIX):
        raise UsageError(f"{uri!r} does not name a backup: expected s3://BUCKET/…/<timestamp>_<run id>.dump "
                         "(see `backups list`).")
    return bucket, key


def segment(value: str) -> str:
    """A key path segment: anything but letters, digits, '.', '_' and '-' becomes '-'."""
    return _SEGMENT_UNSAFE.sub("-", value).strip("-") or "-"


def key_segment(value: str, what: str) -> str:
    """`segment(value)` for a value a user gave (an environment, a database, a run id): refused, naming
    `what`, when it is empty or `.`/`..`, or holds `/`, `\\` or a control character, which would make
    another path of the key (`…/../…`) or hide one."""
    if (not value.strip() or value.strip() in (".", "..") or any(c in value for c in "/\\")
            or any(ord(c) < 32 or ord(c) == 127 for c in value)):
        raise UsageError(f"{what} {value!r} cannot be part of an S3 key: empty names, '.', '..', '/', '\\' and "
                         "control characters are refused. Use letters, digits, '.', '_' and '-' "
                         "([A-Za-z0-9][A-Za-z0-9._-]*, e.g. production).")
    return segment(value)


def database_prefix(prefix: str, environment: str, database: str) -> str:
    return "/".join(p for p in (prefix.strip("/"), key_segment(environment, "environment"),
                                key_segment(database, "database")) if p) + "/"


def dump_key(prefix: str, environment: str, database: str, started: datetime, run_id: str) -> str:
    stamp = started.strftime(TIMESTAMP_FORMAT)
    return f"{database_prefix(prefix, environment, database)}{stamp}_{key_segment(run_id, 'run id')}{DUMP_SUFFIX}"


def manifest_key(key: str) -> str:
    return key[: -len(DUMP_SUFFIX)] + MANIFEST_SUFFIX


def s3_error(exc: BaseException) -> tuple[str, str]:
    """(error code, message) of a botocore exception."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return str(err.get("Code") or status or "error"), str(err.get("Message") or exc)
    return type(exc).__name__, str(exc)


def not_found(exc: ClientError) -> bool:
    return s3_error(exc)[0] in ("404", "NoSuchKey", "NotFound")


# --- server-side encryption ---------------------------------------------------------

@dataclass(frozen=True)
class Sse:
    """Server-side encryption asked for on every object: SSE-S3 or SSE-KMS (optionally a key id)."""

    mode: str = "AES256"
    kms_key_id: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in SSE_MODES:
            raise UsageError(f"unknown server-side encryption {self.mode!r}: use one of {', '.join(SSE_MODES)}.")
        if self.kms_key_id and self.mode != "aws:kms":
            raise UsageError("a KMS key id only applies to --sse aws:kms; drop --kms-key-id or use --sse aws:kms.")

    def put_args(self) -> dict[str, str]:
        args = {"ServerSideEncryption": self.mode}
        if self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        return args

    def as_dict(self) -> dict[str, str | None]:
        return {"mode": self.mode, "kms_key_id": self.kms_key_id}


def check_object_sse(s3: Any, bucket: str, key: str, sse: Sse) -> dict[str, Any]:
    """HeadObject the stored object and check its SSE header says what was asked for."""
    head = s3.head_object(Bucket=bucket, Key=key)
    got, got_key = head.get("ServerSideEncryption"), head.get("SSEKMSKeyId")
    where = f"s3://{bucket}/{key}"
    if not got:
        raise BucketCheckFailed(
            bucket, f"{where} was stored without server-side encryption (HeadObject returned no "
            f"x-amz-server-side-encryption header although {sse.mode} was requested); the object was deleted",
            "Turn on default encryption for the bucket (aws s3api put-bucket-encryption --bucket "
            f"{bucket} ...) or use an S3 endpoint that honours SSE headers, then run the backup again.")
    if got != sse.mode:
        raise BucketCheckFailed(
            bucket, f"{where} was stored with server-side encryption {got}, not the {sse.mode} requested; "
            "the object was deleted", f"Align the bucket's default encryption with --sse {sse.mode} "
            "(or pass --sse to match the bucket), then run the backup again.")
    wanted = sse.kms_key_id
    if wanted and got_key and not wanted.startswith("alias/") and not (
            got_key == wanted or got_key.endswith("/" + wanted) or got_key.endswith(":" + wanted)):
        raise BucketCheckFailed(
            bucket, f"{where} was encrypted with KMS key {got_key}, not {wanted}; the object was deleted",
            "Check --kms-key-id and the bucket's default encryption key, then run the backup again.")
    return {"mode": got, "kms_key_id": got_key, "size": head.get("ContentLength")}


# --- bucket checks --------------------------------------------------------------------

def check_bucket(s3: Any, bucket: str, log: Log) -> dict[str, str]:
    """Fail early, naming the bucket and the fix, unless it is reachable and private."""
    endpoint = getattr(getattr(s3, "meta", None), "endpoint_url", "the S3 endpoint")
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code, _ = s3_error(exc)
        if code in ("403", "AccessDenied", "Forbidden", "SignatureDoesNotMatch", "InvalidAccessKeyId"):
            raise BucketCheckFailed(bucket, f"access denied to these credentials at {endpoint} ({code})",
                                    "Check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or the backup_s3 connection) "
                                    "and that the bucket policy lets them list, read and write it.") from None
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise BucketCheckFailed(bucket, f"does not exist at {endpoint}",
                                    f"Create it (aws s3 mb s3://{bucket}, with public access blocked and default "
                                    "encryption) or fix the bucket name in --to.") from None
        raise BucketCheckFailed(bucket, f"HeadBucket failed at {endpoint}: {code}",
                                "Check the endpoint and the credentials.") from None
    except BotoCoreError as exc:
        code, detail = s3_error(exc)
        raise BucketCheckFailed(bucket, f"cannot reach S3 ({code}: {detail})",
                                "Check AWS_ENDPOINT_URL (or the backup_s3 connection's endpoint_url), the "
                                "network and the credentials.") from None
    return {"public_access_block": _check_public_access_block(s3, bucket, log)}


def _check_public_access_block(s3: Any, bucket: str, log: Log) -> str:
    fix = (f"Block all public access: aws s3api put-public-access-block --bucket {bucket} "
           "--public-access-block-configuration BlockPublicAcls=true,IgnorePublicAcls=true,"
           "BlockPublicPolicy=true,RestrictPublicBuckets=true")
    try:
        config = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    except ClientError as exc:
        code, _ = s3_error(exc)
        if code == "NoSuchPublicAccessBlockConfiguration":
            raise BucketCheckFailed(bucket, "has no public access block, so nothing stops a policy or ACL "
                                    "from making backups public", fix + ".") from None
        log(f"warning: bucket {bucket!r}: cannot tell whether public access is blocked (GetPublicAccessBlock "
            f"returned {code}); make sure it is.")
        return "unknown"
    open_flags = [flag for flag in PAB_FLAGS if not config.get(flag)]
    if open_flags:
        raise BucketCheckFailed(bucket, f"public access is not fully blocked ({', '.join(open_flags)} off)", fix + ".")
    return "all blocked"


# --- manifests ----------------------------------------------------------------------

def read_manifest(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """The manifest beside dump `key`, or None when there is none."""
    try:
        body = s3.get_object(Bucket=bucket, Key=manifest_key(key))["Body"].read()
    except ClientError as exc:
        if not_found(exc):
            return None
        raise
    return json.loads(body)


def write_manifest(s3: Any, bucket: str, key: str, manifest: dict[str, Any], sse: Sse) -> None:
    """(Re-)put the manifest beside dump `key`, encrypted like the dump."""
    body = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
    try:
        s3.put_object(Bucket=bucket, Key=manifest_key(key), Body=body, ContentType="application/json",
                      **sse.put_args())
    except (ClientError, BotoCoreError) as exc:
        code, detail = s3_error(exc)
        raise S3TransferFailed("PutObject (manifest)", bucket, manifest_key(key), code, detail,
                               "The manifest was not written.", context="manifest write") from None


def sse_of(manifest: dict[str, Any]) -> Sse:
    sse = manifest.get("sse") or {}
    return Sse(sse.get("mode") or "AES256", sse.get("kms_key_id"))


# --- listing and pruning ----------------------------------------------------------------

@dataclass
class BackupEntry:
    """One backup under a prefix, complete or not."""

    bucket: str
    key: str  # the .dump key (even when only the manifest exists)
    environment: str
    database: str
    run_id: str
    created: datetime
    has_dump: bool
    manifest: dict[str, Any] | None = field(default=None, repr=False)
    dump_size: int | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def complete(self) -> bool:
        return self.has_dump and self.manifest is not None

    @property
    def state(self) -> str:
        if self.complete:
            return "complete"
        return "incomplete: no manifest" if self.has_dump else "incomplete: dump missing"

    @property
    def verification(self) -> dict[str, Any] | None:
        return (self.manifest or {}).get("verification")

    @property
    def verified(self) -> bool:
        return self.complete and bool((self.verification or {}).get("ok"))

    def as_dict(self) -> dict[str, Any]:
        m = self.manifest or {}
        return {"uri": self.uri, "environment": self.environment, "database": self.database,
                "run_id": m.get("run_id", self.run_id), "created": self.created.isoformat(),
                "state": self.state, "complete": self.complete, "verified": self.verified,
                "verification": self.verification, "size": m.get("size", self.dump_size),
                "sha256": m.get("sha256"), "total_rows": m.get("total_rows")}


def _objects(s3: Any, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


def list_backups(s3: Any, uri: str) -> list[BackupEntry]:
    """Every backup under `s3://BUCKET/PREFIX`, oldest first, with its manifest's facts."""
    bucket, prefix = parse_s3_uri(uri)
    base = prefix + "/" if prefix else ""
    found: dict[str, BackupEntry] = {}
    for obj in _objects(s3, bucket, base):
        match = _KEY_RE.match(obj["Key"][len(base):])
        if not match:
            continue
        key = obj["Key"][: -len(match["suffix"])] + DUMP_SUFFIX
        entry = found.get(key)
        if entry is None:
            created = datetime.strptime(match["ts"], TIMESTAMP_FORMAT).replace(tzinfo=timezone.utc)
            entry = found[key] = BackupEntry(bucket, key, match["env"], match["db"], match["run"], created, False)
        if match["suffix"] == DUMP_SUFFIX:
            entry.has_dump, entry.dump_size = True, obj["Size"]
        else:
            entry.manifest = read_manifest(s3, bucket, key)
            if entry.manifest and entry.manifest.get("started_at"):
                entry.created = datetime.fromisoformat(entry.manifest["started_at"])
    return sorted(found.values(), key=lambda e: (e.created, e.key))


@dataclass(frozen=True)
class PruneDecision:
    entry: BackupEntry
    delete: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"uri": self.entry.uri, "action": "delete" if self.delete else "keep", "reason": self.reason,
                "state": self.entry.state, "verified": self.entry.verified,
                "created": self.entry.created.isoformat()}


def plan_prune(entries: list[BackupEntry], keep: int, older_than: timedelta | None,
               now: datetime) -> list[PruneDecision]:
    """Per (environment, database): keep the newest `keep` complete backups and the newest verified
    one; delete the rest (only those older than `older_than`, when given), and incomplete
    remnants past their grace period."""
    groups: dict[tuple[str, str], list[BackupEntry]] = {}
    for entry in entries:
        groups.setdefault((entry.environment, entry.database), []).append(entry)
    decisions: list[PruneDecision] = []
    for group in groups.values():
        complete = sorted((e for e in group if e.complete), key=lambda e: e.created, reverse=True)
        newest_verified = next((e for e in complete if e.verified), None)
        for rank, entry in enumerate(complete):
            if rank < keep:
                decisions.append(PruneDecision(entry, False, f"one of the newest {keep} complete backups"))
            elif entry is newest_verified:
                decisions.append(PruneDecision(entry, False, "the newest verified backup: never pruned"))
            elif older_than is not None and now - entry.created < older_than:
                decisions.append(PruneDecision(entry, False, f"younger than {older_than}"))
            else:
                decisions.append(PruneDecision(entry, True, f"beyond the newest {keep}"
                                               + (f" and older than {older_than}" if older_than else "")))
        for entry in (e for e in group if not e.complete):
            age = now - entry.created
            if age < max(INCOMPLETE_GRACE, older_than or INCOMPLETE_GRACE):
                decisions.append(PruneDecision(entry, False, f"{entry.state}, but recent: may still be in progress"))
            else:
                decisions.append(PruneDecision(entry, True, f"{entry.state}: never counts as a good backup"))
    return sorted(decisions, key=lambda d: (d.entry.created, d.entry.key))


def prune(s3: Any, uri: str, keep: int, older_than: timedelta | None = None, dry_run: bool = True,
          log: Log | None = None, now: datetime | None = None) -> list[PruneDecision]:
    """Delete old backups (dump and manifest together); with `dry_run`, only say what would go."""
    if keep < 1:
        raise UsageError(f"--keep must be at least 1 (got {keep}): prune never deletes every backup.")
    log = log or (lambda _m: None)
    bucket, _ = parse_s3_uri(uri)
    decisions = plan_prune(list_backups(s3, uri), keep, older_than, now or datetime.now(timezone.utc))
    for d in decisions:
        log(f"{'would delete' if dry_run and d.delete else 'delete' if d.delete else 'keep'} {d.entry.uri} "
            f"({d.reason})")
        if d.delete and not dry_run:
            keys = [{"Key": d.entry.key}, {"Key": manifest_key(d.entry.key)}]
            errors = s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True}).get("Errors", [])
            if errors:
                first = errors[0]
                raise S3TransferFailed("DeleteObjects", bucket, first.get("Key", d.entry.key),
                                       first.get("Code", "error"), first.get("Message", ""),
                                       "Some objects of this backup may remain; run prune again.",
                                       context="prune")
    return decisions
