"""devstack/tenants.py: the tenant fleet `make demo-fleet` and bench/fleet.py build on the local stack."""
from __future__ import annotations

import uuid

import psycopg
import pytest

import tenants
from generate_data import content_checksum


@pytest.fixture
def prefix(stack_env: dict[str, str]):
    """A database prefix of this test's own; every database of it is dropped after."""
    database_prefix = f"t_ten_{uuid.uuid4().hex[:6]}_"
    yield database_prefix
    tenants.drop(stack_env["PRODUCTION_DATABASE_URL"], database_prefix)


def count_orphans(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute('SELECT count(*) FROM experiment_assignments a WHERE NOT EXISTS (SELECT 1 FROM '
                            'personalization_experiments e WHERE e.id = a."experimentId")').fetchone()[0]


@pytest.mark.parametrize(("count", "first", "last"), [(4, "tenant_00", "tenant_03"), (200, "tenant_000", "tenant_199")])
def test_tenant_names_are_zero_padded_so_they_sort_in_order(count: int, first: str, last: str) -> None:
    names = tenants.names(count)
    assert (names[0], names[-1], len(names)) == (first, last, count) and names == sorted(names)


@pytest.mark.slow
def test_tenants_are_copies_with_the_same_data_and_re_creating_drops_the_last_runs(
        stack_env: dict[str, str], prefix: str) -> None:
    base = stack_env["PRODUCTION_DATABASE_URL"]
    made = tenants.create(base, 3, database_prefix=prefix)

    assert list(made) == ["tenant_00", "tenant_01", "tenant_02"]
    assert made["tenant_01"].endswith(f"/{prefix}tenant_01")
    data = content_checksum(made["tenant_00"])
    assert content_checksum(made["tenant_02"]) == data
    assert tenants.conn_env(made)["AIRFLOW_CONN_TENANT_02"] == made["tenant_02"]

    again = tenants.create(base, 2, database_prefix=prefix)
    assert tenants.existing(base, prefix) == [f"{prefix}tenant_00", f"{prefix}tenant_01", f"{prefix}tenant_template"]
    assert content_checksum(again["tenant_00"]) == data  # the same data every time


@pytest.mark.slow
def test_orphan_rows_are_planted_in_one_tenant_only(stack_env: dict[str, str], prefix: str) -> None:
    made = tenants.create(stack_env["PRODUCTION_DATABASE_URL"], 2, database_prefix=prefix)

    assert tenants.plant_orphans(made["tenant_01"]) == tenants.ORPHAN_ROWS
    assert count_orphans(made["tenant_01"]) == tenants.ORPHAN_ROWS and count_orphans(made["tenant_00"]) == 0
