"""Identifiers as PostgreSQL quotes them, without a database driver (lint imports this, not psycopg).

`db.ident` gives the same names as `psycopg.sql.Identifier` for SQL that runs; this gives their text
for messages, `to_regclass` arguments and SQL built as text, and is what `db.quoted` returns.
"""
from __future__ import annotations


def quote_ident(name: str) -> str:
    """One name, always double-quoted, inner quotes doubled: what `quote_ident` does in SQL when it must."""
    return '"' + name.replace('"', '""') + '"'


def quoted(*parts: str, split: bool = True) -> str:
    """A (schema-)qualified identifier as text: `quoted("public.t")` or `quoted("public", "t")` is
    `"public"."t"`. One argument is split at its first dot unless `split=False` (a column, a
    constraint, a database: taken whole, so a name that contains a dot stays one name)."""
    if split and len(parts) == 1:
        parts = tuple(parts[0].split(".", 1))
    return ".".join(quote_ident(p) for p in parts)
