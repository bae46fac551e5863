"""Errors of pg/: a database that cannot be reached or answers with an unexpected error."""
from __future__ import annotations

from schema_deploy.errors import SchemaDeployError


class DatabaseError(SchemaDeployError):
    """A database could not be reached or answered with an unexpected error."""

    transient = True
