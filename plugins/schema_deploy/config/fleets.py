"""deploy.yaml's `fleets:`: named sets of databases that one release goes to, in waves.

    fleets:
      tenants:
        prefix: tenant_            # or targets: [conn ids] | catalog: {conn: tenants_catalog, query: "..."}
        waves: {canary: 1, size: "25%", parallel: 4, halt_after: 0, pause: 0s, approve_after_canary: false}
        backup: each               # or none
        window: {by: region, windows: {eu: nightly, us: {cron: "0 9 * * *", duration: 2h}}, default: nightly}
        queue: fleet               # default: queues.default

Defaults: canary 1 (0: no canary wave), size "25%" (a percentage of the fleet, rounded up, at
least 1), parallel 4, halt_after 0 (a percentage of the fleet is rounded down), pause 0s,
approve_after_canary false, backup each, no window, the default queue. Windows are resolved
here, by name from `windows:` or inline, so a misspelt window fails at load, not at the canary.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from schema_deploy.config.durations import parse_duration
from schema_deploy.config.errors import ConfigError
from schema_deploy.config.windows import Window
from schema_deploy.errors import UsageError

FLEET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
FLEET_KEYS = ("targets", "prefix", "catalog", "waves", "backup", "window", "queue")
SOURCES = ("targets", "prefix", "catalog")
WAVE_KEYS = ("canary", "size", "parallel", "halt_after", "pause", "approve_after_canary")
EXAMPLE = 'e.g. fleets: {tenants: {prefix: tenant_, waves: {canary: 1, size: "25%", parallel: 4}}}'


@dataclass(frozen=True)
class Share:
    """A number of members, or a percentage of the fleet (`20`, `"10%"`)."""

    value: float
    percent: bool = False

    def of(self, fleet_size: int, *, round_up: bool) -> int:
        if not self.percent:
            return int(self.value)
        exact = fleet_size * self.value / 100
        return math.ceil(exact - 1e-9) if round_up else math.floor(exact + 1e-9)

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else str(int(self.value))


@dataclass(frozen=True)
class WavesSpec:
    canary: int = 1
    size: Share = Share(25, percent=True)
    parallel: int = 4
    halt_after: Share = Share(0)
    pause: timedelta = timedelta(0)
    approve_after_canary: bool = False


@dataclass(frozen=True)
class FleetWindow:
    """Which maintenance window a member changes in: by one of its attributes (`by`), else `default`;
    no `by` and no `default` means the fleet has no window."""

    by: str | None = None
    windows: tuple[tuple[str, Window], ...] = ()
    default: Window | None = None


@dataclass(frozen=True)
class FleetSpec:
    name: str
    source: str  # targets | prefix | catalog
    targets: tuple[str, ...] = ()
    prefix: str = ""
    catalog_conn: str = ""
    catalog_query: str = ""
    waves: WavesSpec = WavesSpec()
    backup: bool = True
    window: FleetWindow = FleetWindow()
    queue: str = ""  # "" = deploy.yaml's default queue (DeployConfig.fleet_queue)


def fleets_settings(data: dict, path: Path, windows: tuple[Window, ...]) -> tuple[FleetSpec, ...]:
    """Validate `fleets:`; `windows` are deploy.yaml's named windows, which a fleet may name."""
    value = data.get("fleets")
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ConfigError(path, "'fleets' must map fleet names to their settings", f"Write it as a mapping, {EXAMPLE}.")
    return tuple(_fleet(str(name), spec, path, windows) for name, spec in value.items())


def _fleet(name: str, spec: Any, path: Path, windows: tuple[Window, ...]) -> FleetSpec:
    key = f"fleets.{name}"
    if not FLEET_NAME.match(name):
        raise ConfigError(path, f"fleets: {name!r} is not a fleet name",
                          "Use letters, digits, '_', '-' or '.', starting with a letter or digit.")
    if not isinstance(spec, dict):
        raise ConfigError(path, f"{key} must be a mapping", f"Indent its settings under '{name}:', {EXAMPLE}.")
    unknown = sorted(set(spec) - set(FLEET_KEYS))
    if unknown:
        raise ConfigError(path, f"{key}: unknown keys {unknown}", f"A fleet takes {', '.join(FLEET_KEYS)}.")
    given = [s for s in SOURCES if s in spec]
    if len(given) != 1:
        found = "no target source" if not given else "targets from " + " and ".join(given)
        raise ConfigError(path, f"{key} has {found}",
                          "Give exactly one of targets: [connection ids], prefix: tenant_ (connection ids that "
                          "start with it) or catalog: {conn: CONN_ID, query: SELECT ...}.")
    backup = spec.get("backup", "each")
    if backup not in ("each", "none"):
        raise ConfigError(path, f"{key}.backup is {backup!r}",
                          "Write each (a pg_dump of every member before it changes) or none.")
    queue = spec.get("queue", "")
    if queue != "" and (not isinstance(queue, str) or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,100}", queue)):
        raise ConfigError(path, f"{key}.queue is {queue!r}",
                          "Give a queue name: letters, digits, '_', '-', '.' or ':' "
                          "(what the worker's --queues takes).")
    return FleetSpec(name=name, source=given[0], **_source(key, given[0], spec[given[0]], path),
                     waves=_waves(key, spec.get("waves"), path), backup=backup == "each",
                     window=_window(key, spec.get("window"), path, windows), queue=queue)


def _source(key: str, source: str, value: Any, path: Path) -> dict[str, Any]:
    if source == "targets":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
            raise ConfigError(path, f"{key}.targets is {value!r}",
                              "Give a non-empty list of Airflow connection ids, e.g. targets: [tenant_a, tenant_b].")
        dupes = sorted({v for v in value if value.count(v) > 1})
        if dupes:
            raise ConfigError(path, f"{key}.targets lists {', '.join(dupes)} more than once",
                              "List each connection once.")
        return {"targets": tuple(value)}
    if source == "prefix":
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(path, f"{key}.prefix is {value!r}",
                              "Give the start of the members' connection ids, e.g. prefix: tenant_.")
        return {"prefix": value}
    if not isinstance(value, dict) or set(value) != {"conn", "query"} \
            or not all(isinstance(v, str) and v.strip() for v in value.values()):
        raise ConfigError(path, f"{key}.catalog is {value!r}",
                          "Give the catalog's connection id and a query whose first column is a connection id or "
                          "a postgresql:// URL, e.g. catalog: {conn: tenants_catalog, query: \"select conn_id, "
                          "region from tenants where active\"}.")
    return {"catalog_conn": value["conn"], "catalog_query": value["query"]}


def _share(key: str, value: Any, path: Path, minimum: int) -> Share:
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
        return Share(value)
    if isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?%", value.strip()):
        pct = float(value.strip()[:-1])
        if (minimum == 0 and pct <= 100) or 0 < pct <= 100:
            return Share(pct, percent=True)
    raise ConfigError(path, f"{key} is {value!r}",
                      f"Give a whole number of members ({minimum} or more) or a percentage of the fleet up to "
                      "100%, quoted, e.g. 20 or \"10%\".")


def _count(key: str, value: Any, path: Path, minimum: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
        return value
    raise ConfigError(path, f"{key} is {value!r}", f"Give a whole number, {minimum} or more.")


def _waves(key: str, value: Any, path: Path) -> WavesSpec:
    if value is None:
        return WavesSpec()
    key = f"{key}.waves"
    if not isinstance(value, dict):
        raise ConfigError(path, f"{key} must be a mapping", 'e.g. waves: {canary: 1, size: "25%", parallel: 4}.')
    unknown = sorted(set(value) - set(WAVE_KEYS))
    if unknown:
        raise ConfigError(path, f"{key}: unknown keys {unknown}", f"Waves take {', '.join(WAVE_KEYS)}.")
    d = WavesSpec()
    approve = value.get("approve_after_canary", d.approve_after_canary)
    if not isinstance(approve, bool):
        raise ConfigError(path, f"{key}.approve_after_canary is {approve!r}", "Write true or false.")
    try:
        pause = parse_duration(str(value.get("pause", "0s")))
    except UsageError as exc:
        raise ConfigError(path, f"{key}.pause: {exc}", "e.g. pause: 2m (the wait between waves).") from None
    canary = _count(f"{key}.canary", value.get("canary", d.canary), path, 0)
    if approve and canary == 0:
        raise ConfigError(path, f"{key}.approve_after_canary is true but canary is 0",
                          "Give the canary a member (canary: 1), or turn approve_after_canary off.")
    return WavesSpec(canary=canary, size=_share(f"{key}.size", value.get("size", str(d.size)), path, 1),
                     parallel=_count(f"{key}.parallel", value.get("parallel", d.parallel), path, 1),
                     halt_after=_share(f"{key}.halt_after", value.get("halt_after", 0), path, 0), pause=pause,
                     approve_after_canary=approve)


def _one_window(key: str, value: Any, path: Path, windows: tuple[Window, ...]) -> Window:
    named = {w.name: w for w in windows if w.name}
    if isinstance(value, str):
        if value not in named:
            raise ConfigError(path, f"{key} names window {value!r}, which windows: does not declare",
                              f"Use one of {', '.join(named) or '(none declared)'}, or write it inline as "
                              "{cron: \"0 2 * * *\", duration: 2h, timezone: Europe/Berlin}.")
        return named[value]
    if not isinstance(value, dict) or not {"cron", "duration"} <= set(value) \
            or not set(value) <= {"cron", "duration", "timezone", "name"}:
        raise ConfigError(path, f"{key} is {value!r}", "Name a window of windows:, or give {cron, duration, timezone}.")
    try:
        return Window.from_spec({"name": key.split(".", 1)[1], **value})
    except UsageError as exc:
        raise ConfigError(path, f"{key}: {exc}", "Fix that window.") from None


def _window(key: str, value: Any, path: Path, windows: tuple[Window, ...]) -> FleetWindow:
    if value is None:
        return FleetWindow()
    key = f"{key}.window"
    if isinstance(value, str) or (isinstance(value, dict) and "cron" in value):
        return FleetWindow(default=_one_window(key, value, path, windows))
    if not isinstance(value, dict) or not value.get("by") or not isinstance(value.get("by"), str) \
            or not isinstance(value.get("windows"), dict) or not value["windows"] \
            or not set(value) <= {"by", "windows", "default"}:
        raise ConfigError(path, f"{key} is {value!r}",
                          "Name one window for the whole fleet (window: nightly), or one per attribute value: "
                          "window: {by: region, windows: {eu: nightly, us: us_night}, default: nightly}.")
    per = tuple((str(v), _one_window(f"{key}.windows.{v}", w, path, windows)) for v, w in value["windows"].items())
    default = _one_window(f"{key}.default", value["default"], path, windows) if value.get("default") else None
    return FleetWindow(by=value["by"], windows=per, default=default)
