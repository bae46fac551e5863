"""The real Prisma CLI (tests/prisma: 6.19.3, WebAssembly schema engine through @prisma/adapter-pg) for the tests.

`ensure_prisma()` runs `npm ci` there when node_modules is missing or was installed from another
package-lock.json (the session fixture `prisma` in conftest.py calls it once). `Prisma.run` calls the CLI's
entry point with node directly (npx would add a second Node start-up to every run) with the environment
the recipe's prisma.config.ts reads. Runs are costly (about 1.5 s of CPU each, and a successful
`migrate deploy` waits ~10 s on an engine timer before it exits), so the tests batch them and run
independent ones side by side (`run_parallel`).
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from urllib.parse import urlsplit, urlunsplit

import psycopg

from schema_deploy.pg.tools import drop_database, target_of

REPO = Path(__file__).resolve().parents[2]
PRISMA_DIR = REPO / "tests" / "prisma"
ENTRY = PRISMA_DIR / "node_modules" / "prisma" / "build" / "index.js"
STAMP = PRISMA_DIR / "node_modules" / ".schema-deploy-lock-sha256"
NEEDS = ("the Prisma tests need Node.js 20 and npm (Debian: apt-get install nodejs npm); `npm ci` in tests/prisma "
         "then installs the pinned Prisma CLI from the npm registry")


class PrismaUnavailable(RuntimeError):
    """Node or npm is missing, or `npm ci` failed: the message says what to install."""


def ensure_prisma() -> Path:
    """Install tests/prisma's pinned packages with `npm ci` unless node_modules matches package-lock.json."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        raise PrismaUnavailable(f"{'node' if not node else 'npm'} not found: {NEEDS}")
    lock_sha = hashlib.sha256((PRISMA_DIR / "package-lock.json").read_bytes()).hexdigest()
    (PRISMA_DIR / ".npm-ci.lock").touch()
    with open(PRISMA_DIR / ".npm-ci.lock") as guard:  # two pytest processes must not both run npm ci
        fcntl.flock(guard, fcntl.LOCK_EX)
        if ENTRY.exists() and STAMP.exists() and STAMP.read_text() == lock_sha:
            return ENTRY
        proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=PRISMA_DIR, capture_output=True,
                              text=True, timeout=600)
        if proc.returncode != 0 or not ENTRY.exists():
            raise PrismaUnavailable(f"`npm ci` in {PRISMA_DIR} failed (exit {proc.returncode}):\n"
                                    f"{proc.stderr[-3000:]}\n{NEEDS}")
        STAMP.write_text(lock_sha)
    return ENTRY


@dataclass(frozen=True)
class Result:
    """One CLI run: its exit code and what it printed (stdout and stderr together, as a terminal shows it)."""

    args: tuple[str, ...]
    code: int
    output: str

    def __str__(self) -> str:
        return f"prisma {' '.join(self.args)} -> exit {self.code}\n{self.output}"


@dataclass(frozen=True)
class Prisma:
    """The CLI of tests/prisma, run against one database at a time."""

    entry: Path

    def run(self, *args: str, db: str, migrations: Path, schema: Path | None = None, shadow: str | None = None,
            timeout: float = 120) -> Result:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "PRISMA_", "SHADOW_"))}
        env.update(DATABASE_URL=db, MIGRATIONS_DIR=str(migrations), CHECKPOINT_DISABLE="1",
                   PRISMA_HIDE_UPDATE_MESSAGE="1", NO_COLOR="1")
        if schema is not None:
            env["PRISMA_SCHEMA"] = str(schema)
        if shadow is not None:
            env["SHADOW_DATABASE_URL"] = shadow
        proc = subprocess.run(["node", str(self.entry), *args], cwd=PRISMA_DIR, env=env, capture_output=True,
                              text=True, timeout=timeout)
        return Result(args, proc.returncode, proc.stdout + proc.stderr)

    def deploy(self, db: str, migrations: Path) -> Result:
        return self.run("migrate", "deploy", db=db, migrations=migrations)

    def status(self, db: str, migrations: Path) -> Result:
        return self.run("migrate", "status", db=db, migrations=migrations)

    def resolve(self, db: str, migrations: Path, flag: str, name: str) -> Result:
        return self.run("migrate", "resolve", flag, name, db=db, migrations=migrations)


def run_parallel(jobs: dict[str, Callable[[], object]], workers: int = 3) -> dict[str, object]:
    """Run independent chains of CLI calls side by side (most of a deploy's time is an idle wait); each value
    is the chain's result, or the exception it raised (re-raised by `outcome` in the test that reads it)."""
    def guarded(job: Callable[[], object]) -> object:
        try:
            return job()
        except Exception as exc:  # noqa: BLE001 - handed to the test that reads this chain
            return exc

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {name: pool.submit(guarded, job) for name, job in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def outcome(results: dict[str, object], name: str):
    """A chain's result from `run_parallel`; raises what the chain raised."""
    value = results[name]
    if isinstance(value, Exception):
        raise value
    return value


@contextmanager
def databases(base_url: str, count: int) -> Iterator[list[str]]:
    """`count` new empty databases on `base_url`'s server (owned by its role), dropped afterwards."""
    names = [f"t_prisma_{uuid.uuid4().hex[:10]}" for _ in range(count)]
    with psycopg.connect(base_url, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield [urlunsplit(urlsplit(base_url)._replace(path="/" + n)) for n in names]
    finally:
        for name in names:
            drop_database(target_of(base_url), name, "schema-deploy-tests")


def prisma_bundle(root: Path, migrations: dict[str, str | bytes], *, base: Path | None = None) -> Path:
    """A migrations folder in Prisma's layout at `root`: a copy of `base` (if given) plus `name/migration.sql`
    for each entry."""
    if base is not None:
        shutil.copytree(base, root)
    else:
        root.mkdir(parents=True)
        (root / "migration_lock.toml").write_text('provider = "postgresql"\n')
    for name, sql in migrations.items():
        (root / name).mkdir()
        target = root / name / "migration.sql"
        target.write_bytes(sql) if isinstance(sql, bytes) else target.write_text(sql)
    return root
