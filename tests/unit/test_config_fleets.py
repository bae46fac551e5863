"""deploy.yaml's `fleets:`: target sources, waves, backup, windows by attribute, queue; every refusal pinned."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from schema_deploy.config.errors import ConfigError
from schema_deploy.config.fleets import Share, WavesSpec
from schema_deploy.config.settings import DeployConfig, load
from schema_deploy.errors import UsageError

WINDOWS = "windows:\n  - {name: nightly, cron: '0 2 * * *', duration: 2h}\n"


def load_text(tmp_path: Path, text: str) -> DeployConfig:
    path = tmp_path / "deploy.yaml"
    path.write_text(text)
    return load(path)


def test_a_fleet_with_every_key_is_read_into_frozen_settings(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, WINDOWS + """
queues: {default: control}
fleets:
  tenants:
    catalog: {conn: tenants_catalog, query: "select conn_id, region from tenants where active"}
    waves: {canary: 2, size: "10%", parallel: 8, halt_after: "5%", pause: 2m, approve_after_canary: true}
    backup: none
    window: {by: region, windows: {eu: nightly, us: {cron: "0 9 * * *", duration: 1h, timezone: America/New_York}},
             default: nightly}
    queue: fleet
  shards: {targets: [shard_1, shard_2]}
""")
    tenants, shards = cfg.fleet("tenants"), cfg.fleet("shards")

    assert (tenants.source, tenants.catalog_conn, tenants.backup, tenants.queue) == ("catalog", "tenants_catalog",
                                                                                   False, "fleet")
    assert tenants.waves == WavesSpec(canary=2, size=Share(10, True), parallel=8, halt_after=Share(5, True),
                                      pause=timedelta(minutes=2), approve_after_canary=True)
    windows = dict(tenants.window.windows)
    assert tenants.window.by == "region" and windows["eu"].name == "nightly" and tenants.window.default.name == "nightly"
    assert windows["us"].timezone == "America/New_York" and windows["us"].duration == timedelta(hours=1)
    assert shards.targets == ("shard_1", "shard_2") and shards.backup and shards.waves == WavesSpec()
    assert (cfg.fleet_queue("tenants"), cfg.fleet_queue("shards")) == ("fleet", "control")


def test_the_defaults_are_a_canary_then_quarters_four_at_a_time_halting_on_the_first_failure() -> None:
    d = WavesSpec()
    assert (d.canary, str(d.size), d.parallel, str(d.halt_after), d.pause, d.approve_after_canary) == (
        1, "25%", 4, "0", timedelta(0), False)


def test_one_window_may_cover_the_whole_fleet_by_name(tmp_path: Path) -> None:
    spec = load_text(tmp_path, WINDOWS + "fleets: {t: {prefix: tenant_, window: nightly}}\n").fleet("t")
    assert spec.window.by is None and spec.window.default.name == "nightly" and spec.prefix == "tenant_"


def test_an_unknown_fleet_name_is_refused_listing_the_declared_ones(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "fleets: {tenants: {prefix: t_}, shards: {prefix: s_}}\n")
    with pytest.raises(UsageError, match=r"no fleet named 'tenant' \(declared: tenants, shards\)"):
        cfg.fleet("tenant")


@pytest.mark.parametrize(("text", "message"), [
    ("fleets: [a]", "fleets: expected a mapping (keys indented under it), got a list"),
    ("fleets: {'a b': {prefix: t_}}", "fleets['a b']: 'a b' is not a fleet name. Use letters, digits"),
    ("fleets: {t: 3}", "fleets.t: expected a mapping (keys indented under it), got the number 3"),
    ("fleets: {t: {prefix: t_, wave: {}}}", "fleets.t.wave: unknown key. Did you mean waves (in fleets.t)? Keys there: "
                                            "backup, catalog, prefix, queue, targets, waves, window"),
    ("fleets: {t: {}}", "fleets.t has no target source. Give exactly one of targets: [connection ids], prefix:"),
    ("fleets: {t: {prefix: t_, targets: [a]}}", "fleets.t has targets from targets and prefix. Give exactly one"),
    ("fleets: {t: {targets: []}}", "fleets.t.targets is []. Give a non-empty list of Airflow connection ids"),
    ("fleets: {t: {targets: [a, a]}}", "fleets.t.targets lists a more than once. List each connection once."),
    ("fleets: {t: {prefix: ''}}", "fleets.t.prefix: expected text, got an empty string"),
    ("fleets: {t: {catalog: {conn: c}}}", "fleets.t.catalog.query: missing"),
    ("fleets: {t: {prefix: t_, backup: always}}", "fleets.t.backup: expected 'each' or 'none', got the string 'always'"),
    ("fleets: {t: {prefix: t_, queue: 'a b'}}", "fleets.t.queue: the string 'a b' is not a valid queue name. Give a "
                                                "queue name"),
    ("fleets: {t: {prefix: t_, waves: 3}}", "fleets.t.waves: expected a mapping (keys indented under it), got the "
                                            "number 3"),
    ("fleets: {t: {prefix: t_, waves: {sizes: 3}}}", "fleets.t.waves.sizes: unknown key. Did you mean size (in "
                                                     "fleets.t.waves)?"),
    ("fleets: {t: {prefix: t_, waves: {size: 0}}}", "fleets.t.waves.size is 0. Give a whole number of members (1 or more)"),
    ("fleets: {t: {prefix: t_, waves: {size: '0%'}}}", "fleets.t.waves.size is '0%'. Give a whole number"),
    ("fleets: {t: {prefix: t_, waves: {size: '150%'}}}", "fleets.t.waves.size is '150%'. Give a whole number"),
    ("fleets: {t: {prefix: t_, waves: {size: 2.5}}}", "fleets.t.waves.size: expected a whole number, got the number 2.5"),
    ("fleets: {t: {prefix: t_, waves: {size: '10 %'}}}", "fleets.t.waves.size: the string '10 %' is not a valid share "
                                                         "of the fleet. Give a whole number of members or a quoted "
                                                         "percentage"),
    ("fleets: {t: {prefix: t_, waves: {parallel: 0}}}", "fleets.t.waves.parallel: expected a number at least 1, got "
                                                        "the number 0"),
    ("fleets: {t: {prefix: t_, waves: {canary: -1}}}", "fleets.t.waves.canary: expected a number at least 0, got the "
                                                       "number -1"),
    ("fleets: {t: {prefix: t_, waves: {halt_after: -1}}}", "fleets.t.waves.halt_after: expected a number at least 0, "
                                                           "got the number -1"),
    ("fleets: {t: {prefix: t_, waves: {pause: soon}}}", "fleets.t.waves.pause: duration 'soon'"),
    ("fleets: {t: {prefix: t_, waves: {approve_after_canary: yes please}}}",
     "fleets.t.waves.approve_after_canary: expected true or false, got the string 'yes please'. Write true or false"),
    ("fleets: {t: {prefix: t_, waves: {canary: 0, approve_after_canary: true}}}",
     "fleets.t.waves.approve_after_canary is true but canary is 0. Give the canary a member"),
    ("fleets: {t: {prefix: t_, window: daily}}", "fleets.t.window names window 'daily', which windows: does not declare. Use one of nightly"),
    ("fleets: {t: {prefix: t_, window: {by: region}}}", "fleets.t.window.windows: missing"),
    ("fleets: {t: {prefix: t_, window: {by: region, windows: {eu: {cron: x, duration: 1h}}}}}",
     "fleets.t.window.windows.eu: maintenance window t.window.windows.eu: 'x' is not a cron expression"),
    ("fleets: {t: {prefix: t_, window: {by: region, windows: {eu: nightly}, default: {cron: '0 2 * * *'}}}}",
     "fleets.t.window.default.duration: missing"),
])
def test_a_bad_fleet_is_refused_naming_the_file_the_key_and_the_fix(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_text(tmp_path, WINDOWS + text + "\n")
    assert str(err.value).startswith(f"{tmp_path / 'deploy.yaml'}: ") and message in str(err.value)
