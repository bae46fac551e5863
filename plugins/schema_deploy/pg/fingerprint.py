"""A schema fingerprint read from the catalogs, and the differences between two.

Used to prove that online rewrites end where the SQL as written ends, that
staging matched production before a rehearsal, and that a restored backup has
the schema it was taken from. It covers what a migration can change: tables,
columns (type, nullability, default), indexes (definition, validity),
constraints (definition, validated), enum types and their labels, sequences
and views. The ledger and this tool's own schema are left out.
"""
from __future__ import annotations

import hashlib
import json

import psycopg

EXCLUDED_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast", "schema_deploy")
EXCLUDED_TABLES = ("_prisma_migrations",)

QUERIES = {
    "columns": """
        SELECT n.nspname || '.' || c.relname || '.' || a.attname,
               format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
               || coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '')
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attnum > 0 AND NOT a.attisdropped
          AND n.nspname <> ALL (%(schemas)s) AND n.nspname NOT LIKE 'pg_temp%%'
          AND c.relname <> ALL (%(tables)s)
    """,
    "indexes": """
        SELECT n.nspname || '.' || i.relname,
               pg_get_indexdef(x.indexrelid) || CASE WHEN x.indisvalid AND x.indisready THEN '' ELSE ' INVALID' END
        FROM pg_index x
        JOIN pg_class i ON i.oid = x.indexrelid
        JOIN pg_class t ON t.oid = x.indrelid
        JOIN pg_namespace n ON n.oid = i.relnamespace
        WHERE n.nspname <> ALL (%(schemas)s) AND n.nspname NOT LIKE 'pg_temp%%'
          AND t.relname <> ALL (%(tables)s)
    """,
    "constraints": """
        SELECT n.nspname || '.' || c.relname || '.' || k.conname,
               pg_get_constraintdef(k.oid) || CASE WHEN k.convalidated THEN '' ELSE ' (NOT VALIDATED)' END
        FROM pg_constraint k
        JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname <> ALL (%(schemas)s) AND c.relname <> ALL (%(tables)s)
    """,
    "enums": """
        SELECT n.nspname || '.' || t.typname, string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
        FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname <> ALL (%(schemas)s)
        GROUP BY 1
    """,
    "relations": """
        SELECT n.nspname || '.' || c.relname, c.relkind::text
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
          AND n.nspname <> ALL (%(schemas)s) AND n.nspname NOT LIKE 'pg_temp%%'
          AND c.relname <> ALL (%(tables)s) AND c.relname NOT LIKE '\\_prisma\\_migrations%%'
    """,
}


def schema_fingerprint(conn: psycopg.Connection) -> dict[str, dict[str, str]]:
    """The catalog facts of every user schema, as {section: {object: definition}}."""
    params = {"schemas": list(EXCLUDED_SCHEMAS), "tables": list(EXCLUDED_TABLES)}
    return {section: dict(conn.execute(query, params).fetchall()) for section, query in QUERIES.items()}


def fingerprint_digest(fp: dict[str, dict[str, str]]) -> str:
    """One sha256 for a fingerprint (stable: keys sorted)."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()


def diff_fingerprints(a: dict[str, dict[str, str]], b: dict[str, dict[str, str]],
                      a_name: str = "a", b_name: str = "b") -> list[str]:
    """Human-readable differences, one line each; [] when the schemas are the same."""
    lines = []
    for section in sorted(set(a) | set(b)):
        left, right = a.get(section, {}), b.get(section, {})
        for key in sorted(set(left) | set(right)):
            if key not in right:
                lines.append(f"{section} {key}: only in {a_name} ({left[key]})")
            elif key not in left:
                lines.append(f"{section} {key}: only in {b_name} ({right[key]})")
            elif left[key] != right[key]:
                lines.append(f"{section} {key}: {a_name} has {left[key]!r}, {b_name} has {right[key]!r}")
    return lines
