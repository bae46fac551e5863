"""A release: the frozen unit of deployment, stored content-addressed in S3.

A release holds the exact text of every migration of a bundle (and its down.sql),
their checksums, where the bundle came from (folder, git commit), the lint and
precheck summary, and the plan per target (the steps with the SQL after online
rewrites). It is one JSON document, written once under
`s3://BUCKET/PREFIX/releases/<sha256>.json`, whose name is the sha256 of its bytes.

Why one JSON document rather than a tarball and a manifest: migrations are UTF-8
text (a pending one that is not is refused; an applied one travels as base64), so
JSON carries their bytes exactly (CR, LF, tabs as escapes); one GET and one hash check load and prove the
whole release; and an auditor can read it with any tool.

Every task after preflight loads the release by its URI and works from it, never
from the migrations folder, so what was approved is what runs, on any worker.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from schema_deploy.bundle.discover import Bundle, Migration, load_bundle, sha256_hex
from schema_deploy.bundle.errors import MigrationFileError
from schema_deploy.errors import UsageError
from schema_deploy.ops.errors import ReleaseInvalid, ReleaseMissing, ReleaseTampered

FORMAT = 1
RELEASES = "releases"


@dataclass(frozen=True)
class ReleaseFile:
    """One migration as frozen: its ledger name, path inside the bundle, text and checksums.

    A file whose bytes are not UTF-8 (applied long ago: a pending one is refused) is carried as
    base64 (`encoding`, and `down_encoding` for its down.sql, refused when a rollback reads it); a file refused when it was read (a link out of the bundle, not UTF-8)
    carries that refusal (`problem`), so a run from the release refuses it exactly as from the folder.
    Both keys appear only when set: other releases keep their digests.
    """

    name: str
    path: str  # relative to the bundle folder, e.g. 20251017120000_epic5/migration.sql
    sql: str
    checksum: str
    down_sql: str | None = None
    encoding: str | None = None  # "base64" when the bytes are not UTF-8
    down_encoding: str | None = None  # the same for down.sql
    problem: dict[str, Any] | None = None  # MigrationFileError fields: code, line, column, problem, fix
    backfill: str | None = None  # its backfill.yaml's text (UTF-8, checked when read)

    @property
    def raw(self) -> bytes:
        return base64.b64decode(self.sql) if self.encoding == "base64" else self.sql.encode()

    @property
    def down_raw(self) -> bytes | None:
        if self.down_sql is None:
            return None
        return base64.b64decode(self.down_sql) if self.down_encoding == "base64" else self.down_sql.encode()

    def as_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "path": self.path, "sql": self.sql, "checksum": self.checksum,
               "down_sql": self.down_sql,
               "down_checksum": sha256_hex(self.down_raw) if self.down_raw is not None else None}
        if self.encoding is not None:
            out["encoding"] = self.encoding
        if self.down_encoding is not None:
            out["down_encoding"] = self.down_encoding
        if self.problem is not None:
            out["problem"] = self.problem
        if self.backfill is not None:
            out["backfill"] = self.backfill
        return out

    def migration_problem(self, path: Path) -> MigrationFileError | None:
        if self.problem is None:
            return None
        p = self.problem
        return MigrationFileError(path, p.get("line"), p.get("column"), p["problem"], p["fix"], code=p["code"])


@dataclass(frozen=True)
class Release:
    """What a deployment applies, frozen. `digest` (sha256 of `document()`) is its name."""

    bundle: str  # the declared bundle name (deploy.yaml `bundles:`), or the folder's name from the CLI
    source: dict[str, Any]  # folder, git commit and whether the work tree had changes there
    layout: str
    files: tuple[ReleaseFile, ...]
    lint: dict[str, Any] = field(default_factory=dict)
    prechecks: tuple[dict[str, Any], ...] = ()
    plans: dict[str, dict[str, Any]] = field(default_factory=dict)  # target name -> plan summary
    verify: dict[str, str] = field(default_factory=dict)  # the verification queries: relative path -> text
    uri: str | None = field(default=None, compare=False)  # where it is stored, once stored

    def document(self) -> bytes:
        """The canonical bytes: sorted keys, no whitespace, UTF-8. Same content, same digest."""
        body = {"format": FORMAT, "bundle": self.bundle, "source": self.source, "layout": self.layout,
                "migrations": [f.as_dict() for f in self.files], "lint": self.lint,
                "prechecks": list(self.prechecks), "plans": self.plans, "verify": self.verify}
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()

    @cached_property
    def digest(self) -> str:
        """sha256 of `document()`: computed once (the dataclass is frozen, so it cannot go stale)."""
        return sha256_hex(self.document())

    @property
    def short(self) -> str:
        return self.digest[:12]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.files]

    def to_bundle(self) -> Bundle:
        """The release as a Bundle, for the engine: its bytes, never the folder's."""
        root = Path(self.source.get("folder") or f"release-{self.short}")
        migrations = tuple(
            Migration(name=f.name, path=root / f.path, raw=f.raw,
                      down_path=(root / f.path).parent / "down.sql" if f.down_sql is not None else None,
                      down_raw=f.down_raw, backfill_raw=f.backfill.encode() if f.backfill is not None else None,
                      problem=f.migration_problem(root / f.path))
            for f in self.files)
        return Bundle(root=root, layout=self.layout, migrations=migrations)

    def plan(self, target: str) -> dict[str, Any] | None:
        return self.plans.get(target)

    def summary(self) -> dict[str, Any]:
        """The short form that travels in XCom, Slack and the audit record."""
        return {"uri": self.uri, "sha256": self.digest, "short": self.short, "bundle": self.bundle,
                "source": self.source, "migrations": [{"name": f.name, "checksum": f.checksum} for f in self.files]}


# --- building ---------------------------------------------------------------------

def carried(raw: bytes) -> tuple[str, str | None]:
    """A file's bytes as a release carries them: its text when it is UTF-8, else base64 (and "base64")."""
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


def freeze(bundle: Bundle, name: str, *, lint: dict[str, Any] | None = None,
           prechecks: list[dict[str, Any]] | None = None, plans: dict[str, dict[str, Any]] | None = None,
           source: dict[str, Any] | None = None, verify: dict[str, str] | None = None) -> Release:
    """A release of `bundle` as read from disk now (or re-frozen from a release: pass its `source`);
    `verify`: the verification queries that go with it (see `verify_files`)."""
    files = []
    for m in bundle.migrations:
        text, encoding = carried(m.raw)
        down_text, down_encoding = carried(m.down_raw) if m.down_raw is not None else (None, None)
        problem = None
        if m.problem is not None:
            e = m.problem
            problem = {"code": e.code, "line": e.line, "column": e.column, "problem": e.problem, "fix": e.fix}
        files.append(ReleaseFile(name=m.name, path=str(m.path.relative_to(bundle.root)), sql=text,
                                 checksum=m.checksum, encoding=encoding, problem=problem,
                                 down_sql=down_text, down_encoding=down_encoding,
                                 backfill=backfill_text(m)))
    if source is None:
        source = source_of(bundle.root)
        if bundle.symlinks:  # allowed by deploy.yaml (allow_symlinks: true): the release says which were followed
            source["symlinks"] = [{"path": path, "target": target} for path, target in bundle.symlinks]
    return Release(bundle=name, source=source, layout=bundle.layout, files=tuple(files),
                   lint=lint or {}, prechecks=tuple(prechecks or ()), plans=plans or {}, verify=verify or {})


def backfill_text(m: Migration) -> str | None:
    """A migration's backfill.yaml as the release carries it: checked first (a release never freezes a
    backfill that cannot run), as text."""
    if m.backfill_raw is None:
        return None
    from schema_deploy.backfill.spec import load_spec

    load_spec(m.name, m.backfill_path, m.backfill_raw)
    return m.backfill_raw.decode("utf-8")


VERIFY_PATH = re.compile(r"^(explain/)?[A-Za-z0-9][A-Za-z0-9_.-]*\.sql$")


def verify_files(folder: Path) -> dict[str, str]:
    """The checks (`*.sql`) and representative queries (`explain/*.sql`) of a verification folder,
    frozen with the release: verification on any worker runs what was approved with it."""
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): p.read_text(encoding="utf-8")
            for pattern in ("*.sql", "explain/*.sql") for p in sorted(folder.glob(pattern))}


@contextmanager
def scratch_folder(name: str, files: dict[str, bytes]) -> Iterator[Path]:
    """A temporary folder `name` holding `files` (relative path -> bytes), removed afterwards: how
    tools that read a folder (verification, `prisma migrate diff`) get a release's bytes."""
    with tempfile.TemporaryDirectory(prefix=f"schema-deploy-{name}-") as tmp:
        folder = Path(tmp) / name
        for rel, data in files.items():
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        yield folder


@contextmanager
def verify_dir(release: Release, fallback: Path) -> Iterator[Path]:
    """A folder holding the release's verification queries (`fallback`, the worker's own, for a
    release frozen without any)."""
    if not release.verify:
        yield fallback
        return
    with scratch_folder("verify", {rel: text.encode() for rel, text in release.verify.items()}) as folder:
        yield folder


def source_of(folder: Path) -> dict[str, Any]:
    """The folder, and the git commit of its work tree (with whether the folder differs from it)."""
    source: dict[str, Any] = {"folder": str(folder), "git_commit": None, "git_dirty": None}
    try:
        commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--", "."],
                                   capture_output=True, text=True, timeout=10)
            source.update(git_commit=commit.stdout.strip(), git_dirty=bool(dirty.stdout.strip()))
    except (OSError, subprocess.TimeoutExpired):  # no git on this machine: the folder alone is the source
        pass
    return source


def plan_summary(plan: Any) -> dict[str, Any]:
    """A `plan.Plan` as the release keeps it: per migration its steps with the SQL that will run."""
    return {"online": plan.online, "migrations": [
        {"name": mp.migration.name, "checksum": mp.migration.checksum, "digest": mp.digest,
         "resume_from": mp.resume_from,
         "steps": [{"number": s.number, "transactional": s.transactional, "sql": [p.sql for p in s.statements],
                    "rewritten": [p.reason for p in s.statements if p.reason], "locks": s.locks} for s in mp.steps]}
        for mp in plan.migrations]}


def check_plan(release: Release, target: str, plan: Any) -> None:
    """Refuse a plan for `target` that is not the one frozen in the release (another step list,
    or a migration the release did not plan there): nothing unapproved runs."""
    frozen = release.plan(target)
    if frozen is None:
        return
    approved = {m["name"]: m["digest"] for m in frozen["migrations"]}
    for mp in plan.migrations:
        name = mp.migration.name
        if name not in approved:
            raise ReleaseInvalid(release.uri or release.short, f"{name} is pending on {target} now, but the release "
                                 f"planned only {', '.join(approved) or 'nothing'} there",
                                 "The target's ledger changed since preflight; start a new run, which plans it again.")
        if approved[name] != mp.digest:
            raise ReleaseInvalid(release.uri or release.short, f"the plan of {name} on {target} differs from the "
                                 f"one frozen in the release (steps {mp.digest} now, {approved[name]} approved)",
                                 "The target's tables changed since preflight (online rewrites depend on them); "
                                 "start a new run, which plans and approves it again.")


def changes_on_disk(release: Release, folder: Path | None = None) -> list[str]:
    """What differs between the release and the folder it came from, as it is on this machine now:
    files edited, added or missing. The release wins; callers log this."""
    folder = Path(folder or release.source.get("folder") or "")
    if not folder.is_dir():
        return [f"{folder}: the migrations folder is not on this machine (the release is used)"]
    try:
        disk = load_bundle(folder).by_name()
    except Exception as exc:  # noqa: BLE001 - an unreadable folder is just another difference
        return [f"{folder}: cannot be read as a bundle here ({exc})"]
    frozen = {f.name: f for f in release.files}
    changes = [f"{disk[n].path}: edited since the release (sha256 {disk[n].checksum[:12]}… on disk, "
               f"{f.checksum[:12]}… in the release)" for n, f in frozen.items() if n in disk
               and disk[n].checksum != f.checksum]
    changes += [f"{disk[n].path}: not in the release (added since)" for n in disk if n not in frozen]
    changes += [f"{folder / f.path}: in the release, missing on disk" for n, f in frozen.items() if n not in disk]
    for n, f in frozen.items():  # down.sql too: a rollback runs the release's, never the folder's
        if n not in disk:
            continue
        mine, theirs = f.down_raw, disk[n].down_raw
        if mine != theirs:
            where = disk[n].down_path or (folder / f.path).parent / "down.sql"
            changes.append(f"{where}: " + ("not in the release (added since)" if mine is None
                                           else "in the release, missing on disk" if theirs is None
                                           else f"edited since the release (sha256 {sha256_hex(theirs)[:12]}… on "
                                                f"disk, {sha256_hex(mine)[:12]}… in the release)"))
    return changes


# --- storing and loading -----------------------------------------------------------

def release_uri(root: str, digest: str) -> str:
    return f"{root.rstrip('/')}/{RELEASES}/{digest}.json"


def _s3_failed(operation: str, uri: str, exc: BaseException) -> Exception:
    """An S3 failure as the package's (transient) error, naming the call, the object and the fix."""
    from schema_deploy.backups.errors import S3TransferFailed
    from schema_deploy.backups.store import parse_s3_uri, s3_error

    bucket, key = parse_s3_uri(uri)
    code, detail = s3_error(exc)
    return S3TransferFailed(operation, bucket, key, code, detail, "Nothing was changed.", context="release")


def store(s3: Any, release: Release, root: str, sse: dict[str, str] | None = None) -> Release:
    """Write the release under `root` (s3://BUCKET/PREFIX) once; an object already there with the
    same name is the same release (its bytes are checked, never overwritten)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from schema_deploy.backups.store import not_found, parse_s3_uri

    body, digest = release.document(), release.digest
    uri = release_uri(root, digest)
    bucket, key = parse_s3_uri(uri)
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if not not_found(exc):
            raise _s3_failed("HeadObject", uri, exc) from None
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json",
                          Metadata={"sha256": digest}, **(sse or {}))
        except (ClientError, BotoCoreError) as put_exc:
            raise _s3_failed("PutObject", uri, put_exc) from None
        return replace(release, uri=uri)
    except BotoCoreError as exc:
        raise _s3_failed("HeadObject", uri, exc) from None
    try:
        load(s3, uri)  # present: prove it is intact rather than trusting the name
    except ReleaseTampered as exc:
        raise ReleaseInvalid(uri, f"an object is already stored under this release's name, but it was changed "
                             f"after it was written: its bytes hash to sha256 {exc.actual}",
                             "It was not overwritten. Find out who wrote to the releases prefix (S3 access logs), "
                             "keep a copy for the investigation, then delete that object: the next run writes "
                             "the release again.") from None
    return replace(release, uri=uri)


def digest_of(uri: str) -> str:
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    digest = name[:-len(".json")] if name.endswith(".json") else ""
    if f"/{RELEASES}/" not in uri or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise UsageError(f"{uri!r} does not name a release: expected s3://BUCKET/PREFIX/{RELEASES}/<sha256>.json "
                         "(what `release create` printed, or the preflight task's log).")
    return digest


def check_file(uri: str, f: ReleaseFile) -> None:
    """A release names its files as a bundle does (`<name>/migration.sql` or `<name>.sql`): nothing
    else, so no path inside it can point outside a folder it is written to."""
    from schema_deploy.bundle.discover import NAME_RE

    if not NAME_RE.match(f.name) or f.path not in (f"{f.name}/migration.sql", f"{f.name}.sql"):
        raise ReleaseInvalid(uri, f"migration {f.name!r} has path {f.path!r}, which is not "
                             "<timestamp>_<name>/migration.sql or <timestamp>_<name>.sql",
                             "The release was not written by `release create` or a preflight; do not use it.")
    for what, encoding in ((f.path, f.encoding), (f"{f.name}/down.sql", f.down_encoding)):
        if encoding not in (None, "base64"):
            raise ReleaseInvalid(uri, f"{what} has encoding {encoding!r}; this version knows base64 only",
                                 "Create the release again with this version (`release create`).")
    if sha256_hex(f.raw) != f.checksum:
        raise ReleaseInvalid(uri, f"{f.path} does not hash to its recorded checksum",
                             "The release is corrupt; create a new one from the migrations folder.")


def load(s3: Any, uri: str) -> Release:
    """The release at `uri`, after checking that its bytes hash to its name."""
    from botocore.exceptions import BotoCoreError, ClientError

    from schema_deploy.backups.store import not_found, parse_s3_uri

    digest = digest_of(uri)
    bucket, key = parse_s3_uri(uri)
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if not_found(exc):
            raise ReleaseMissing(uri) from None
        raise _s3_failed("GetObject", uri, exc) from None
    except BotoCoreError as exc:
        raise _s3_failed("GetObject", uri, exc) from None
    actual = hashlib.sha256(body).hexdigest()
    if actual != digest:
        raise ReleaseTampered(uri, actual)
    try:
        data = json.loads(body)
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, this version reads format {FORMAT}")
        files = tuple(ReleaseFile(name=m["name"], path=m["path"], sql=m["sql"], checksum=m["checksum"],
                                  down_sql=m.get("down_sql"), encoding=m.get("encoding"),
                                  down_encoding=m.get("down_encoding"), problem=m.get("problem"),
                                  backfill=m.get("backfill"))
                      for m in data["migrations"])
        release = Release(bundle=data["bundle"], source=data["source"], layout=data["layout"], files=files,
                          lint=data.get("lint") or {}, prechecks=tuple(data.get("prechecks") or ()),
                          plans=data.get("plans") or {}, verify=dict(data.get("verify") or {}), uri=uri)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ReleaseInvalid(uri, f"cannot be read as a release ({exc})",
                             "Create the release again with this version (`release create`).") from None
    for f in files:
        check_file(uri, f)
    for rel in release.verify:
        if not VERIFY_PATH.match(rel):
            raise ReleaseInvalid(uri, f"verification query path {rel!r} is not <name>.sql or explain/<name>.sql",
                                 "The release was not written by `release create` or a preflight; do not use it.")
    return release
