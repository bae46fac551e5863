"""devstack/airflow_local.py hands a fleet's connections to the LocalExecutor's components."""
from __future__ import annotations

import pytest

from airflow_local import fleet_connections


def test_a_fleets_connections_are_passed_on_and_the_stacks_own_are_left_to_the_stack(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_TENANT_07", "postgresql://u:p@127.0.0.1:5432/tenant_07")
    monkeypatch.setenv("AIRFLOW_CONN_STAGING_DB", "postgresql://u:p@127.0.0.1:5432/other")
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")

    found = fleet_connections()

    assert found["AIRFLOW_CONN_TENANT_07"].endswith("/tenant_07")
    assert "AIRFLOW_CONN_STAGING_DB" not in found and "AIRFLOW__CORE__EXECUTOR" not in found
