"""How the health gate counts a wait across deferrals (no database: `check` is scripted).

A deferred task runs again in a new process and tells the gate what its earlier attempts waited. That
time belongs to one wait: the step (or backfill) that waited. Another step's wait, or a later pause of a
backfill that went on in between, starts its own count, or max_wait would fire on time spent healthy."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from schema_deploy.config.health import HealthSettings
from schema_deploy.health.errors import HealthGateTimedOut, HealthGateWaiting
from schema_deploy.health.gate import Decision, HealthGate
from schema_deploy.health.signals import Reading

LAGGING = Decision((Reading("replica lag", 3e6, 1e6, True, "replica r1 replay lag 2.9 MB (over 1.0 MB)"),))
HEALTHY = Decision((Reading("replica lag", 0, 1e6, False, "replica r1 replay lag 0.0 MB (under 1.0 MB)"),))


@dataclass
class Scripted(HealthGate):
    script: list[Decision] = field(default_factory=list)
    now: float = 0.0

    def check(self, tables, ours=None) -> Decision:
        return self.script.pop(0)


def gate(*decisions: Decision, **options) -> Scripted:
    g = Scripted("postgresql://u@h/db", HealthSettings(poll_s=1.0, max_wait_s=60), script=list(decisions), **options)
    g.clock = lambda: g.now

    def sleep(s: float) -> None:
        g.now += s

    g.sleep = sleep
    return g


def test_earlier_attempts_of_the_same_wait_count_toward_max_wait() -> None:
    g = gate(LAGGING, LAGGING, waited_before_s=59.5, wait_reason_before="first", wait_what_before="step 3/16")
    with pytest.raises(HealthGateTimedOut) as err:
        g.wait("step 3/16", ["t"])
    assert err.value.waited_s >= 60


def test_an_earlier_wait_for_another_step_is_not_counted() -> None:
    g = gate(LAGGING, HEALTHY, waited_before_s=59.5, wait_reason_before="first", wait_what_before="step 3/16")
    health = g.wait("step 7/16", ["t"])
    assert (health.waited_s, health.wait_reason) == (1.0, "replica r1 replay lag 2.9 MB (over 1.0 MB)")


def test_a_later_pause_after_going_on_is_a_new_wait_that_a_deferring_caller_can_tell_apart() -> None:
    told: list[HealthGateWaiting] = []

    def defer(waiting: HealthGateWaiting) -> None:
        told.append(waiting)
        raise waiting

    g = gate(HEALTHY, LAGGING, waited_before_s=30.0, wait_reason_before="first", wait_what_before="backfill b",
             defer=defer)
    assert g.wait("backfill b", ["t"]).waited_s == 30.0  # the earlier attempts' wait, ended now
    with pytest.raises(HealthGateWaiting):
        g.wait("backfill b", ["t"])  # a second pause of the same backfill, later
    assert told[-1].waited_s == 0.0  # nothing waited before it: the caller keeps a new start
