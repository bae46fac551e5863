"""Does schema.prisma describe what the migrations create? `prisma migrate diff`, as an optional preflight check.

When deploy.yaml names a schema (`prisma: {schema: prisma/schema.prisma}`), preflight can run
``prisma migrate diff --from-migrations <migrations> --to-schema-datamodel <schema> --exit-code``
on a scratch database that is created on the given server and dropped afterwards. An empty
diff means the migrations create exactly the schema's models; otherwise every difference
becomes one line ("schema.prisma has field experiment_assignments.score that no migration
creates"). When Prisma cannot run on this machine (no Node, no installed Prisma) the check
says so once in the log and is skipped: it is an extra, not a gate the deployment depends on.

Prisma is found in deploy.yaml's `prisma.cli` folder (one holding node_modules/prisma, like
tests/prisma), else as ``npx --no-install prisma``. A folder whose prisma.config.ts uses a
driver adapter gets the shadow database as SHADOW_DATABASE_URL (Prisma refuses
--shadow-database-url with an adapter; tests/prisma/prisma.config.ts shows how to read it).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from psycopg import sql

from schema_deploy.pg import db
from schema_deploy.pg.tools import drop_database, target_of
from schema_deploy.plan.errors import PrismaCheckFailed, PrismaSchemaMismatch
from schema_deploy.redact import scrub

Log = Callable[[str], None]
APPLICATION = "schema-deploy-prisma-check"
DIFF_TIMEOUT_S = 300
SKIPPED = "the schema.prisma check is skipped"


@dataclass(frozen=True)
class PrismaCli:
    """How to start Prisma here: the command, where to run it, and whether it goes through a driver adapter."""

    argv: tuple[str, ...]
    cwd: Path
    adapter: bool = False


def find_cli(cli_dir: Path | None = None) -> PrismaCli | str:
    """The Prisma CLI to run, or the reason there is none usable on this machine."""
    if shutil.which("node") is None:
        return "Node.js is not installed (`node` is not on PATH)"
    if cli_dir is not None:
        entry = cli_dir / "node_modules" / "prisma" / "build" / "index.js"
        if not entry.is_file():
            return f"{entry} does not exist (run `npm ci` in {cli_dir})"
        config = cli_dir / "prisma.config.ts"
        adapter = config.is_file() and "adapter" in config.read_text(encoding="utf-8", errors="replace")
        return PrismaCli(("node", str(entry)), cli_dir, adapter)
    npx = shutil.which("npx")
    if npx is None:
        return "npm's `npx` is not installed"
    probe = subprocess.run([npx, "--no-install", "prisma", "--version"], capture_output=True, text=True,
                           timeout=120, env=prisma_env({}))
    if probe.returncode != 0:
        return f"`npx --no-install prisma --version` failed: {scrub(probe.stderr.strip()[-300:])}"
    return PrismaCli((npx, "--no-install", "prisma"), Path.cwd())


def prisma_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a Prisma run: no telemetry, no update notice, no colours, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SHADOW_DATABASE_URL")}
    env.update(CHECKPOINT_DISABLE="1", PRISMA_HIDE_UPDATE_MESSAGE="1", NO_COLOR="1", **extra)
    return env


def schema_differences(schema_path: Path, migrations_dir: Path, shadow_url: str, log: Log, *,
                       cli_dir: Path | None = None) -> list[str] | None:
    """What `prisma migrate diff` finds between the migrations and schema.prisma, one sentence each ([] when
    they agree), or None when Prisma is not usable here (said once in `log`).

    `shadow_url` names a server and a role that may CREATE DATABASE (staging's migrator, say): a scratch
    database is created there for the migrations and dropped afterwards, whatever happens.
    """
    cli = find_cli(cli_dir)
    if isinstance(cli, str):
        log(f"Prisma is not usable on this worker ({cli}): {SKIPPED}")
        return None
    if not any(migrations_dir.glob("*/migration.sql")):
        log(f"{migrations_dir} is not in Prisma's folder layout (<name>/migration.sql): {SKIPPED}")
        return None
    admin = target_of(shadow_url)
    name = f"schema_deploy_shadow_{uuid.uuid4().hex[:12]}"
    with db.connect(admin.url, application_name=APPLICATION) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(db.ident(name, split=False)))
    try:
        scratch = urlunsplit(urlsplit(shadow_url)._replace(path="/" + name))
        args = ["migrate", "diff", "--from-migrations", str(migrations_dir.resolve()),
                "--to-schema-datamodel", str(schema_path.resolve()), "--exit-code"]
        if not cli.adapter:
            args += ["--shadow-database-url", scratch]
        env = prisma_env({"DATABASE_URL": scratch, "SHADOW_DATABASE_URL": scratch,
                          "MIGRATIONS_DIR": str(migrations_dir.resolve()), "PRISMA_SCHEMA": str(schema_path.resolve())})
        log(f"prisma migrate diff: {migrations_dir} against {schema_path} (scratch database {name}, dropped after)")
        proc = subprocess.run([*cli.argv, *args], cwd=cli.cwd, env=env, capture_output=True, text=True,
                              timeout=DIFF_TIMEOUT_S)
    finally:
        drop_database(admin, name, APPLICATION)
    if proc.returncode == 0:
        return []
    if proc.returncode == 2:  # --exit-code: the diff is not empty
        return summary_lines(proc.stdout)
    raise PrismaCheckFailed(schema_path, migrations_dir, proc.returncode, admin.redact(proc.stdout + proc.stderr))


def require_schema_matches(schema_path: Path, migrations_dir: Path, shadow_url: str, log: Log, *,
                           cli_dir: Path | None = None) -> None:
    """Preflight's check: raise `PrismaSchemaMismatch` listing the differences; go on when Prisma is unusable."""
    differences = schema_differences(schema_path, migrations_dir, shadow_url, log, cli_dir=cli_dir)
    if differences:
        raise PrismaSchemaMismatch(schema_path, migrations_dir, differences)
    if differences == []:
        log(f"{schema_path} matches what the migrations create (prisma migrate diff is empty)")


# --- reading Prisma's summary -------------------------------------------------------------------

TABLE = re.compile(r"^\[\*\] Changed the `(?P<name>[^`]+)` (?P<kind>table|enum)$")
SECTION = re.compile(r"^\[(?P<sign>[+\-*])\] (?P<what>.+)$")
ITEM = re.compile(r"^\s+- (?P<name>.+)$")
CHANGE = re.compile(r"^\s+\[(?P<sign>[+\-*])\] (?P<what>.+)$")
COLUMN = re.compile(r"^(?P<verb>Added|Removed) column `(?P<column>[^`]+)`$")
OBJECT = re.compile(r"^(?P<verb>Added|Removed) (?P<what>.+)$")


def summary_lines(text: str) -> list[str]:
    """Prisma's human-readable diff (from the migrations to the schema) as sentences about schema.prisma."""
    lines: list[str] = []
    section: tuple[str, str] | None = None  # ("top", "Added tables") or ("table"/"enum", name)
    for raw in text.splitlines():
        if not raw.strip():
            continue
        if m := TABLE.match(raw):
            section = (m["kind"], m["name"])
        elif m := SECTION.match(raw):
            section = ("top", f"{m['sign']} {m['what']}")
        elif (m := ITEM.match(raw)) and section and section[0] == "top":
            lines.append(top_level(section[1], m["name"]))
        elif (m := CHANGE.match(raw)) and section and section[0] != "top":
            lines.append(change(section[0], section[1], m["sign"], m["what"]))
        else:
            lines.append(f"schema.prisma and the migrations differ: {raw.strip()}")
    return lines


def top_level(header: str, name: str) -> str:
    sign, what = header.split(" ", 1)
    kind = what.split()[-1].rstrip("s")  # "Added tables" -> table
    if sign == "+":
        return f"schema.prisma has a {'model' if kind == 'table' else kind} for {kind} {name} that no migration creates"
    if sign == "-":
        return f"the migrations create {kind} {name}, which schema.prisma does not declare"
    return f"schema.prisma and the migrations disagree on {kind} {name} ({what})"


def change(kind: str, owner: str, sign: str, what: str) -> str:
    if (m := COLUMN.match(what)) and kind == "table":
        if m["verb"] == "Added":
            return f"schema.prisma has field {owner}.{m['column']} that no migration creates"
        return f"the migrations create column {owner}.{m['column']}, which schema.prisma has no field for"
    if (m := OBJECT.match(what)) and sign in "+-":
        thing = m["what"].replace("`", "")
        if m["verb"] == "Added":
            return f"schema.prisma has {thing} on {kind} {owner} that no migration creates"
        return f"the migrations create {thing} on {kind} {owner}, which schema.prisma does not declare"
    return f"schema.prisma and the migrations disagree on {kind} {owner}: {what.replace('`', '')}"
