"""Non-secret settings from one file, `deploy.yaml`, with defaults that work on the local stack.

Secrets never live here: database URLs, S3 keys and Slack tokens come from
Airflow connections (`staging_db`, `production_db`, `backup_s3`,
`slack_deploys`) or, for the CLI, from the environment. The file's path is
`$SCHEMA_DEPLOY_CONFIG`, else `deploy.yaml` at the project root.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

from schema_deploy.config.errors import BundleNotDeclared, ConfigError
from schema_deploy.errors import UsageError

from schema_deploy.config.health import HealthSettings

if TYPE_CHECKING:  # imported where the file is read: windows bring croniter, which `lint` does not need
    from schema_deploy.config.fleets import FleetSpec
    from schema_deploy.config.windows import Window

LINT_SEVERITIES = ("error", "warning", "info")
LINT_OFF = "off"
PRISMA_SPLITTER_RULE = "prisma-splitter-semicolon"
ROOT = Path(__file__).resolve().parents[3]
BUNDLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class PrismaSettings:
    """The `prisma:` section: does the team also deploy with Prisma, and where its schema is."""

    deploys: bool = False  # also `prisma migrate deploy`: lint's prisma-splitter-semicolon becomes an error
    schema: Path | None = None  # a schema.prisma that preflight diffs against the migrations (prisma_check.py)
    cli: Path | None = None  # a folder with Prisma installed (node_modules/prisma); default: `npx --no-install prisma`


PRISMA_EXAMPLE = "e.g. prisma: {deploys: true, schema: prisma/schema.prisma}"
PRISMA_KEYS = ("deploys", "schema", "cli")


def prisma_settings(data: dict, path: Path) -> PrismaSettings:
    """Validate the `prisma:` section of a parsed deploy.yaml (lint reads it too: this is its one parser)."""
    from schema_deploy.config.messages import empty_text, unknown_key, wrong_type

    value = data.get("prisma")
    if value is None:
        return PrismaSettings()
    if not isinstance(value, dict):
        raise wrong_type(path, ["prisma"], "dict_type", value)
    for key in value:
        if key not in PRISMA_KEYS:
            raise unknown_key(path, ["prisma", key], list(PRISMA_KEYS))
    deploys = value.get("deploys", False)
    if not isinstance(deploys, bool):
        raise wrong_type(path, ["prisma", "deploys"], "bool_type", deploys)
    paths: dict[str, Path | None] = {}
    for key in ("schema", "cli"):
        given = value.get(key)
        if given is not None and not isinstance(given, str):
            raise wrong_type(path, ["prisma", key], "string_type", given)
        if given == "":
            raise empty_text(path, ["prisma", key])
        paths[key] = path.parent / given if given else None
    return PrismaSettings(deploys=deploys, **paths)


@dataclass(frozen=True)
class LintConfig:
    """deploy.yaml's per-rule lint severity overrides (`off` disables a rule). Their form is checked
    here; their rule ids by lint (`lint.config.checked`), the one owner of the rule registry."""

    severity: dict[str, str] = field(default_factory=dict)
    source: str | None = None

    def severity_of(self, r: Any) -> str:  # r: lint.registry.Rule
        return self.severity.get(r.id, r.severity)


@dataclass(frozen=True)
class DeployConfig:
    """Everything a deployment needs to know that is not a secret."""

    # The bundles a deployment may use, by name: the trigger form offers these names, never a path.
    bundles: tuple[tuple[str, Path], ...] = (("main", ROOT / "sql" / "migrations"),)
    default_bundle: str = "main"
    # Bundles whose migrations may be symbolic links resolving outside their folder (`allow_symlinks: true`).
    symlink_bundles: frozenset[str] = frozenset()
    verify_dir: Path = ROOT / "sql" / "verify"
    backup_bucket: str = "schema-deploy-backups"
    backup_prefix: str = "backups"
    backup_sse: str = "AES256"
    backup_kms_key_id: str | None = None
    backup_restore_check: bool = True
    gate_commands: tuple[tuple[str, ...], ...] = ()
    gate_timeout: timedelta = timedelta(minutes=10)
    approval_manual: bool = True
    approval_scheduled: bool = True
    approver_must_differ: bool = False
    windows: tuple[Window, ...] = ()
    window_safety_factor: float = 2.0
    lock_timeout_ms: int = 100
    max_lock_timeout_ms: int = 2000
    lock_retries: int = 10
    health: HealthSettings = field(default_factory=HealthSettings)  # production's health gate (`health:`)
    precheck_timeout_ms: int = 60_000  # `prechecks: {timeout_ms: …}`: statement_timeout of each data precheck
    slack_channel: str = "#deploys"
    schedule_lead: timedelta | None = None  # scheduled runs start this long before each window; None = manual only
    expect_index_mb: tuple[float, float] = (50.0, 100.0)
    expect_speedup_pct: tuple[float, float] = (20.0, 40.0)
    expect_measurable_rows: int = 100_000  # below it, query performance is not measurable (criteria.py)
    prisma: PrismaSettings = field(default_factory=PrismaSettings)
    # Celery queue per environment, and `default` for the tasks that open no database.
    queues: tuple[tuple[str, str], ...] = ()
    demo: dict[str, object] = field(default_factory=dict)
    lint: LintConfig = field(default_factory=LintConfig)
    fleets: tuple[FleetSpec, ...] = ()  # `fleets:` (config/fleets.py)
    source: Path | None = None

    @property
    def migrations(self) -> Path:
        """The default bundle's folder."""
        return dict(self.bundles)[self.default_bundle]

    @property
    def bundle_names(self) -> list[str]:
        return [name for name, _ in self.bundles]

    def queue(self, env: str | None) -> str:
        """The queue a task of `env` ("staging", "production"; None for a task that opens no database)
        runs on: deploy.yaml's `queues:`, else `default` (Airflow's default queue, one worker for all)."""
        declared = dict(self.queues)
        return declared.get(env or "default") or declared.get("default") or DEFAULT_QUEUE

    def fleet(self, name: str) -> FleetSpec:
        """The fleet declared under `fleets:` with this name; any other name is refused with the declared ones."""
        for spec in self.fleets:
            if spec.name == name:
                return spec
        declared = ", ".join(f.name for f in self.fleets) or "none"
        raise UsageError(f"{self.source or 'deploy.yaml'}: no fleet named {name!r} (declared: {declared}); "
                         "pass one of those, or declare it under fleets:.")

    def fleet_queue(self, name: str) -> str:
        """The queue of the fleet's database tasks: its `queue:`, else the default queue."""
        return self.fleet(name).queue or self.queue(None)

    def symlinks_allowed(self, folder: Path) -> tuple[bool, str | None]:
        """Whether a folder given on the command line is a declared bundle that allows links out of it
        (and that bundle's name)."""
        for name, path in self.bundles:
            if Path(path).resolve() == Path(folder).resolve():
                return name in self.symlink_bundles, name
        return False, None

    def bundle_path(self, name: str | None) -> Path:
        """The folder of a declared bundle (the default one for None or ""); anything else, a path
        above all, is refused with the declared names."""
        name = (name or "").strip() or self.default_bundle
        declared = dict(self.bundles)
        if name not in declared:
            raise BundleNotDeclared(name, self.bundle_names, str(self.source or "deploy.yaml"))
        return declared[name]


def effective(cfg: DeployConfig) -> dict[str, Any]:
    """The settings in effect, as plain JSON-able values for `config check` (deploy.yaml holds no secret;
    the values are scrubbed all the same, in case someone put a URL with a password in one)."""
    from dataclasses import fields

    from schema_deploy.redact import scrub

    def plain(value: Any) -> Any:
        if isinstance(value, (Path, timedelta)):
            return str(value)
        if isinstance(value, (list, tuple, set, frozenset)):
            return [plain(v) for v in (sorted(value) if isinstance(value, (set, frozenset)) else value)]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if hasattr(value, "__dataclass_fields__"):
            return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
        return scrub(value) if isinstance(value, str) else value

    return {f.name: plain(getattr(cfg, f.name)) for f in fields(cfg) if f.name != "source"}


def config_path() -> Path:
    return Path(os.environ.get("SCHEMA_DEPLOY_CONFIG", ROOT / "deploy.yaml"))


def load(path: Path | str | None = None, *, must_exist: bool = False) -> DeployConfig:
    """Read deploy.yaml (or the defaults when it does not exist and `must_exist` is off); errors name the
    key and the fix. The one reader of deploy.yaml: lint's severities come from here too."""
    path = Path(path) if path else config_path()
    data = read_yaml(path, must_exist)
    return DeployConfig() if data is None else from_mapping(data, path)


def load_current() -> DeployConfig:
    """`load()` of the file in use, parsed again only when its bytes changed: a DAG file's parse asks
    many times (a queue per task, the form's choices, the schedule) and parses it once. (Reading the
    bytes is cheap; YAML and the typed model are what cost.)"""
    path = config_path()
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        digest = None
    return _load_version(str(path), digest)


@functools.lru_cache(maxsize=4)
def _load_version(path: str, digest: str | None) -> DeployConfig:
    return load(path)  # an error is not cached: the next call reads the file again


def load_lint(path: Path | str | None = None, *, must_exist: bool = False) -> LintConfig:
    """Only what `lint` needs of deploy.yaml (`lint:` and `prisma:`, validated as `load` validates them),
    without the rest of the file's machinery (windows' cron, fleets): a pre-commit hook runs lint once a
    file, and `config check` is where the whole file is checked."""
    path = Path(path) if path else config_path()
    data = read_yaml(path, must_exist)
    return LintConfig() if data is None else lint_settings(data, path)


def read_yaml(path: Path, must_exist: bool) -> dict | None:
    """The top-level mapping of a YAML file; None when it does not exist and need not."""
    if not path.exists():
        if must_exist:
            raise ConfigError(path, "not found", "Pass an existing file with --config, or omit --config.")
        return None
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: several times faster
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, f"cannot be read ({exc})", "Make it a readable UTF-8 YAML file.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, f"not valid YAML ({exc})", "Fix the YAML syntax at the position shown.") from None
    if not isinstance(data, dict):
        raise ConfigError(path, "expected a mapping of settings at the top level", "See deploy.yaml in the repository for the layout.")
    return data


def from_mapping(data: dict, path: Path) -> DeployConfig:
    """The settings of a parsed deploy.yaml: keys and types checked by the typed model first
    (config/model.py: unknown keys, wrong types), then what only building them can check (a cron, a
    duration, a default bundle that is declared, a window a fleet names, a range's order)."""
    from schema_deploy.config.durations import parse_duration
    from schema_deploy.config.fleets import fleets_settings
    from schema_deploy.config.model import (Approval, Backup, Expectations, Gate, Health, Lock, Prechecks, Slack,
                                            validate)
    from schema_deploy.config.windows import Window

    m = validate(data, path)
    base = path.parent
    backup, gate, approval = m.backup or Backup(), m.gate or Gate(), m.approval or Approval()
    lock, slack, expect = m.lock or Lock(), m.slack or Slack(), m.expectations or Expectations()
    if m.schedule and not m.windows:
        raise ConfigError(path, "schedule is set but there are no windows to schedule against",
                          "Add a window under 'windows:', or remove 'schedule:' for manual runs only.")
    windows = []
    for i, w in enumerate(m.windows or []):
        try:
            windows.append(Window.from_spec(w.model_dump(exclude_none=True)))
        except UsageError as exc:
            raise ConfigError(path, f"windows[{i}]: {exc}", "Fix that window's entry.") from None
    bundles, default_bundle, symlink_bundles = _bundles(data, base, path)
    defaults = DeployConfig()
    return DeployConfig(
        bundles=bundles,
        default_bundle=default_bundle,
        symlink_bundles=symlink_bundles,
        verify_dir=(base / m.verify_dir) if m.verify_dir else defaults.verify_dir,
        backup_bucket=backup.bucket,
        backup_prefix=backup.prefix,
        backup_sse=backup.sse,
        backup_kms_key_id=backup.kms_key_id,
        backup_restore_check=backup.restore_check,
        gate_commands=tuple(tuple(cmd) for cmd in gate.commands or ()),
        gate_timeout=_duration(parse_duration, gate.timeout, "gate.timeout", path),
        approval_manual=approval.manual_runs == "required",
        approval_scheduled=approval.scheduled_runs == "required",
        approver_must_differ=approval.approver_must_differ,
        windows=tuple(windows),
        window_safety_factor=m.window_safety_factor,
        lock_timeout_ms=lock.lock_timeout_ms,
        max_lock_timeout_ms=lock.max_lock_timeout_ms,
        lock_retries=lock.lock_retries,
        health=health_settings(m.health or Health(), path),
        precheck_timeout_ms=(m.prechecks or Prechecks()).timeout_ms,
        slack_channel=slack.channel,
        schedule_lead=_duration(parse_duration, m.schedule.lead, "schedule.lead", path)
        if m.schedule and m.schedule.lead else None,
        expect_index_mb=_range(expect.index_storage_mb, "index_storage_mb", defaults.expect_index_mb, path),
        expect_speedup_pct=_range(expect.query_speedup_percent, "query_speedup_percent", defaults.expect_speedup_pct,
                                  path),
        expect_measurable_rows=expect.measurable_from_rows,
        prisma=prisma_settings(data, path),
        queues=tuple((key, getattr(m.queues, key)) for key in QUEUE_KEYS if m.queues and getattr(m.queues, key)),
        demo=dict(m.demo or {}),
        lint=lint_settings(data, path),
        fleets=fleets_settings(data, path, tuple(windows)),
        source=path,
    )


def _duration(parse: Any, text: str, key: str, path: Path) -> timedelta:
    try:
        return parse(text)
    except UsageError as exc:
        raise ConfigError(path, f"{key}: {str(exc).rstrip('.')}", "e.g. 10m, 2h or 1d.") from None


def health_settings(h: Any, path: Path) -> HealthSettings:
    """The `health:` section (config.model.Health) as the gate's settings: sizes in bytes, durations in seconds."""
    from schema_deploy.config.durations import parse_duration

    def seconds(text: str, key: str) -> float:
        value = _duration(parse_duration, text, f"health.{key}", path).total_seconds()
        if value <= 0:
            raise ConfigError(path, f"health.{key}: {text!r} is no time at all", "Give a duration above zero, e.g. 2s.")
        return value

    mb = 1024 * 1024
    return HealthSettings(enabled=h.enabled, max_replica_lag_bytes=h.max_replica_lag_mb * mb,
                          max_wal_bytes_per_s=h.max_wal_mb_per_s * mb,
                          max_transaction_age_s=seconds(h.max_transaction_age, "max_transaction_age"),
                          max_lock_waiters=h.max_lock_waiters, poll_s=seconds(h.poll, "poll"),
                          max_wait_s=seconds(h.max_wait, "max_wait"))


QUEUE_KEYS = ("staging", "production", "default")
DEFAULT_QUEUE = "default"


def lint_settings(data: dict, path: Path) -> LintConfig:
    """The `lint:` section of a parsed deploy.yaml, its form checked (lint checks the rule ids when it runs)."""
    return lint_section(data.get("lint"), path, prisma_deploys=prisma_settings(data, path).deploys)


def lint_section(section: object, path: Path | str, *, prisma_deploys: bool = False) -> LintConfig:
    """`lint: {severity: {rule-id: error|warning|info|off}}`: keys and levels checked; `prisma_deploys`
    (the team also runs `prisma migrate deploy`) makes prisma-splitter-semicolon an error by default."""
    from schema_deploy.config.messages import described, unknown_key, wrong_type

    section = section or {}
    if not isinstance(section, dict):
        raise wrong_type(path, ["lint"], "dict_type", section)
    for key in section:
        if key != "severity":
            raise unknown_key(path, ["lint", key], ["severity"])
    overrides = section.get("severity") or {}
    if not isinstance(overrides, dict):
        raise wrong_type(path, ["lint", "severity"], "dict_type", overrides)
    valid = (*LINT_SEVERITIES, LINT_OFF)
    # YAML 1.1 reads a bare `off` as false; take it as meant.
    overrides = {rid: LINT_OFF if level is False else level for rid, level in overrides.items()}
    for rid, level in overrides.items():
        if level not in valid:
            raise ConfigError(path, f"lint.severity.{rid}: expected {', '.join(repr(v) for v in valid[:-1])} or "
                                    f"{valid[-1]!r}, got {described(level)}", "Use one of those.")
    if prisma_deploys:
        # A team that also runs `prisma migrate deploy` cannot deploy a file Prisma's splitter cuts wrongly.
        overrides.setdefault(PRISMA_SPLITTER_RULE, "error")
    return LintConfig(severity=dict(overrides), source=str(path))


def _bundles(data: dict, base: Path, path: Path) -> tuple[tuple[tuple[str, Path], ...], str, frozenset[str]]:
    """`bundles: {name: folder | {path: folder, allow_symlinks: bool}, ...}` with `default_bundle:`
    (optional with one bundle), or the older single `migrations: folder`, which declares it as the
    bundle `main`; and the names of the bundles that allow links out of their folder."""
    if "bundles" in data and "migrations" in data:
        raise ConfigError(path, "both 'bundles' and 'migrations' are set",
                          "Declare every folder under 'bundles:' (name: folder) and remove 'migrations:'.")
    if "bundles" not in data:
        folder = base / data["migrations"] if "migrations" in data else DeployConfig().migrations
        return (("main", folder),), "main", frozenset()
    declared = data["bundles"]
    example = "e.g. bundles: {main: sql/migrations}"
    if not isinstance(declared, dict) or not declared:
        raise ConfigError(path, "'bundles' must map bundle names to folders", f"Write it as a mapping, {example}.")
    bundles, linked = [], set()
    for name, folder in declared.items():
        if not isinstance(name, str) or not BUNDLE_NAME.match(name):
            raise ConfigError(path, f"bundles: {name!r} is not a bundle name",
                              "Use letters, digits, '_', '-' or '.', starting with a letter or digit.")
        if isinstance(folder, dict):
            unknown = sorted(set(folder) - {"path", "allow_symlinks"})
            if unknown:
                raise ConfigError(path, f"bundles.{name}: unknown key {unknown[0]!r}",
                                  f"A bundle takes path and allow_symlinks, e.g. bundles: {{{name}: {{path: "
                                  "sql/migrations, allow_symlinks: true}}")
            allow = folder.get("allow_symlinks", False)
            if not isinstance(allow, bool):
                raise ConfigError(path, f"bundles.{name}.allow_symlinks: expected true or false, got {allow!r}",
                                  "Write allow_symlinks: true (or leave it out: links out of the folder are refused).")
            if allow:
                linked.add(name)
            folder = folder.get("path")
        if not isinstance(folder, str) or not folder.strip():
            raise ConfigError(path, f"bundles.{name} must be a folder path", f"Give the folder as a string, {example}.")
        bundles.append((name, base / folder))
    default = data.get("default_bundle")
    if default is None:
        if len(bundles) > 1:
            raise ConfigError(path, f"{len(bundles)} bundles are declared but no default_bundle",
                              f"Add default_bundle: one of {', '.join(n for n, _ in bundles)}.")
        default = bundles[0][0]
    if default not in dict(bundles):
        raise ConfigError(path, f"default_bundle {default!r} is not declared under bundles",
                          f"Use one of {', '.join(n for n, _ in bundles)}.")
    return tuple(bundles), str(default), frozenset(linked)


def _range(value: list[float] | None, key: str, default: tuple[float, float], path: Path) -> tuple[float, float]:
    """`[low, high]` (the model checked its shape); None is the default."""
    if value is None:
        return default
    if value[0] > value[1]:
        raise ConfigError(path, f"expectations.{key} is [{value[0]:g}, {value[1]:g}]: low above high",
                          "Give [low, high] numbers, e.g. [20, 40].")
    return float(value[0]), float(value[1])