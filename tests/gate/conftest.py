"""The Epic 5 gate suite: run by deploy_schema's test gate against staging (DATABASE_URL).

Every test leaves staging as it found it: writes happen inside a transaction that is
rolled back at the end.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest


@pytest.fixture(scope="session")
def database_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        pytest.fail("DATABASE_URL is not set: the gate suite runs against the staging database "
                    "(the deploy_schema test gate sets it).")
    return url


@pytest.fixture
def tx(database_url: str) -> Iterator[psycopg.Connection]:
    """A connection inside a transaction that is always rolled back."""
    with psycopg.connect(database_url) as conn:
        try:
            yield conn
        finally:
            conn.rollback()
