"""deploy.yaml's keys and their types: one typed model (pydantic v2), and one formatter for its errors.

Every section forbids keys it does not know and takes values strictly as typed: `'false'` is not
false, `fast` is not a number of milliseconds. What the model cannot say (a cron expression, a
duration, a window named that `windows:` declares, a rule id of lint's registry) is checked where
the settings are built (`config.settings.from_mapping`, `config.fleets`, `lint.config`), with messages
of the same shape: `deploy.yaml: backup.restore_check: expected true or false, got the string 'false'`.

An unknown key's message names the closest valid key and its section (a top-level `lock_retries: 3`
is `lock.lock_retries`), so a misplaced key is never silently ignored.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from schema_deploy.config.errors import ConfigError
from schema_deploy.config.messages import EXPECTED, described, dotted, empty_text, unknown_key, wrong_type

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
QueueName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,100}$")]
Text = Annotated[str, StringConstraints(min_length=1)]
Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
Range = Annotated[list[float], Field(min_length=2, max_length=2)]
Share = NonNegative | Annotated[str, StringConstraints(pattern=r"^\s*\d+(\.\d+)?%\s*$")]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


class BundleSpec(Section):
    path: Text
    allow_symlinks: bool = False


class Backup(Section):
    bucket: Text = "schema-deploy-backups"
    prefix: str = "backups"
    sse: Literal["AES256", "aws:kms"] = "AES256"
    kms_key_id: Text | None = None
    restore_check: bool = True


class Gate(Section):
    timeout: Text = "10m"
    commands: list[list[str]] | None = None


class Approval(Section):
    manual_runs: Literal["required", "form"] = "required"
    scheduled_runs: Literal["required", "skip"] = "required"
    approver_must_differ: bool = False


class WindowSpec(Section):
    cron: Text
    duration: Text
    timezone: Text = "UTC"
    name: Text | None = None


class Lock(Section):
    lock_timeout_ms: Positive = 100
    max_lock_timeout_ms: Positive = 2000
    lock_retries: NonNegative = 10


class Health(Section):
    enabled: bool = True
    max_replica_lag_mb: Positive = 64
    max_wal_mb_per_s: Positive = 64
    max_transaction_age: Text = "10m"
    max_lock_waiters: NonNegative = 0
    poll: Text = "2s"
    max_wait: Text = "10m"


class Slack(Section):
    channel: Text = "#deploys"


class Schedule(Section):
    lead: Text | None = None


class Expectations(Section):
    index_storage_mb: Range | None = None  # None: the default ([50, 100])
    query_speedup_percent: Range | None = None  # None: the default ([20, 40])
    measurable_from_rows: Positive = 100_000  # timings and index storage are judged from this table size on


class Prisma(Section):
    deploys: bool = False
    schema_file: Text | None = Field(default=None, alias="schema")
    cli: Text | None = None


class Lint(Section):
    # YAML 1.1 reads a bare `off` as false: taken as meant (lint.config checks the rule ids).
    severity: dict[str, Literal["error", "warning", "info", "off"] | Literal[False]] | None = None


class Prechecks(Section):
    timeout_ms: Positive = 60_000


class Queues(Section):
    staging: QueueName | None = None
    production: QueueName | None = None
    default: QueueName | None = None


class Catalog(Section):
    conn: Text
    query: Text


class Waves(Section):
    canary: NonNegative = 1
    size: Share = "25%"
    parallel: Positive = 4
    halt_after: Share = 0
    pause: Text = "0s"
    approve_after_canary: bool = False


class FleetWindows(Section):
    by: Text
    windows: dict[str, Text | WindowSpec]
    default: Text | WindowSpec | None = None


class Fleet(Section):
    targets: list[Text] | None = None
    prefix: Text | None = None
    catalog: Catalog | None = None
    waves: Waves | None = None
    backup: Literal["each", "none"] = "each"
    window: Text | WindowSpec | FleetWindows | None = None
    queue: QueueName | None = None


class DeployYaml(Section):
    """The whole file. A section written with nothing under it (`lint:`) is its defaults."""

    bundles: dict[Name, Text | BundleSpec] | None = None
    default_bundle: Text | None = None
    migrations: Text | None = None  # the older single-bundle form: the bundle `main`
    verify_dir: Text | None = None
    backup: Backup | None = None
    gate: Gate | None = None
    approval: Approval | None = None
    windows: list[WindowSpec] | None = None
    window_safety_factor: Annotated[float, Field(gt=0)] = 2.0
    lock: Lock | None = None
    health: Health | None = None
    slack: Slack | None = None
    schedule: Schedule | None = None
    expectations: Expectations | None = None
    prisma: Prisma | None = None
    lint: Lint | None = None
    prechecks: Prechecks | None = None
    queues: Queues | None = None
    fleets: dict[Name, Fleet] | None = None
    demo: dict[str, Any] | None = None  # devstack/demo.py's own settings, free-form


def validate(data: dict, path: Path) -> DeployYaml:
    """`data` (a parsed deploy.yaml) against the model; the first problem as a ConfigError."""
    try:
        return DeployYaml.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, data, path) from None


# --- the one formatter ------------------------------------------------------------------------------

def tags(loc: tuple, data: Any, kind: str) -> list[int]:
    """Positions in `loc` that pydantic adds for a union's alternatives (`str`, `constrained-str`,
    `WindowSpec`, …) or a dict's keys (`[key]`): the parts that are no key or index of the file's data
    where they stand (but a missing key, which is the last part of a `missing` error)."""
    found, node = [], data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif kind == "missing" and i == len(loc) - 1:
            pass
        else:
            found.append(i)
    return found


def data_path(loc: tuple, data: Any, kind: str = "") -> list[str | int]:
    """`loc` without the parts pydantic adds (see `tags`): the keys and indexes of the file."""
    skip = set(tags(loc, data, kind))
    return [part for i, part in enumerate(loc) if i not in skip]


SCALAR_TYPES = ("string_type", "int_type", "float_type", "bool_type")


def chosen(errors: list[dict], data: Any, resolved: int = 0) -> dict:
    """The error to report. A value that fits none of a union's forms (a fleet's `window` may be a name, a
    window or windows by attribute) fails once per form: report the form it came closest to (the fewest
    errors, a value never judged by a form whose kind it does not have), and an unknown key before
    anything else. `resolved`: how many unions of the errors' locations were decided already."""
    def unions(e: dict) -> list[int]:
        return [i for i in tags(e["loc"], data, e["type"]) if e["loc"][i] != "[key]"][resolved:]

    sites: dict[tuple, list[dict]] = {}
    for e in errors:
        union = unions(e)
        sites.setdefault(e["loc"][:union[0]] if union else e["loc"] + ("#", len(sites)), []).append(e)
    picks = []
    for site, group in sites.items():
        if site[-2:-1] == ("#",):  # no union here: the error itself
            picks.append(group[0])
            continue
        branches: dict[object, list[dict]] = {}
        for e in group:
            branches.setdefault(e["loc"][len(site)], []).append(e)
        # A branch that failed only on the value's kind says less than one whose kind fit but whose
        # content did not (a mapping judged as text; '10 %' judged as a whole number).
        kind_only = {b for b, es in branches.items()
                     if all(e["type"] in SCALAR_TYPES and len(e["loc"]) == len(site) + 1 for e in es)}
        real = {b: es for b, es in branches.items() if b not in kind_only} if len(kind_only) < len(branches) else {}
        best = min((real or branches).values(), key=len)
        picks.append(chosen(best, data, resolved + 1) if any(len(unions(e)) > 1 for e in best)
                     else next((e for e in best if e["type"] == "extra_forbidden"), best[0]))
    return next((e for e in picks if e["type"] == "extra_forbidden"), picks[0])


def config_error(exc: ValidationError, data: dict, path: Path) -> ConfigError:
    """The first error of a validation, in the project's message shape."""
    error = chosen(exc.errors(include_url=False), data)
    where = data_path(error["loc"], data, error["type"])
    key = dotted(where)
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        return unknown_key(path, where, siblings_of(where), key_paths())
    if kind == "missing":
        return ConfigError(path, f"{key}: missing", "Add it: it has no default.")
    if kind in EXPECTED:
        return wrong_type(path, where, kind, value)
    if kind == "literal_error":
        options = error.get("ctx", {}).get("expected", "")
        return ConfigError(path, f"{key}: expected {options}, got {described(value)}", "Use one of those.")
    if kind in ("greater_than_equal", "greater_than"):
        bound = error["ctx"].get("ge", error["ctx"].get("gt"))
        sign = "at least" if kind == "greater_than_equal" else "more than"
        return ConfigError(path, f"{key}: expected a number {sign} {bound}, got {described(value)}",
                           "0 milliseconds would wait forever." if key.endswith("_ms") else "Fix its value.")
    if kind == "string_pattern_mismatch":
        if error["loc"][-1] == "[key]":  # a name of the writer's own: a bundle's, a fleet's
            return ConfigError(path, f"{key}: {str(where[-1])!r} is not a {NAMES.get(str(where[-2]), 'name')}",
                               "Use letters, digits, '_', '-' or '.', starting with a letter or digit.")
        last = str(where[-1]) if where else ""
        return ConfigError(path, f"{key}: {described(value)} is not a valid {PATTERNS.get(last, 'value')}",
                           PATTERN_FIXES.get(PATTERNS.get(last, ""), "Fix its value") + ".")
    if kind == "string_too_short":
        return empty_text(path, where)
    if kind in ("too_short", "too_long") and isinstance(value, list):
        return ConfigError(path, f"{key}: expected [low, high], got a list of {len(value)}",
                           "Give two numbers, e.g. [20, 40].")
    return ConfigError(path, f"{key}: {error['msg']}, got {described(value)}", "Fix its value.")


NAMES = {"bundles": "bundle name", "fleets": "fleet name"}
PATTERNS = {"queue": "queue name", "staging": "queue name", "production": "queue name", "default": "queue name",
            "size": "share of the fleet", "halt_after": "share of the fleet"}
PATTERN_FIXES = {"queue name": "Give a queue name: letters, digits, '_', '-', '.' or ':' (what the worker's --queues "
                               "takes)",
                 "share of the fleet": 'Give a whole number of members or a quoted percentage of the fleet, '
                                       'e.g. 20 or "10%"'}


def key_paths(model: type[BaseModel] = DeployYaml, prefix: str = "") -> list[str]:
    """Every key the file may hold, dotted (`lock.lock_retries`; a name of the writer's own as `*`)."""
    paths = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        paths.append(key)
        for inner in _models(field.annotation):
            paths.extend(key_paths(inner, f"{key}.*." if _is_mapping(field.annotation) else f"{key}."))
    return sorted(set(paths))


def _models(annotation: Any) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    for arg in getattr(annotation, "__args__", ()) or ():
        found.extend(m for m in _models(arg) if m not in found)
    return found


def _is_mapping(annotation: Any) -> bool:
    """Keys below this field sit under a name or an index of the writer's (`bundles.*.path`, `windows.*.cron`)."""
    text = str(annotation)
    return "dict[" in text or "list[" in text


def siblings_of(where: list[str | int]) -> list[str]:
    """The valid keys beside the one at `where` (its section's keys)."""
    pattern = [("*" if isinstance(p, int) else p) for p in where[:-1]]
    return sorted({p.rsplit(".", 1)[-1] for p in key_paths() if _parent_matches(p, pattern)})


def _parent_matches(path: str, pattern: list[str]) -> bool:
    parts = path.split(".")[:-1]
    return len(parts) == len(pattern) and all(a == b or a == "*" for a, b in zip(parts, pattern))
