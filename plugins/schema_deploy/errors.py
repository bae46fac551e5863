"""The root of the package's exceptions, and the helpers every message uses.

Each subpackage keeps its own conditions in its `errors.py` (`bundle.errors`, `engine.errors`, …),
one small class per condition that builds its message from its fields: what failed, where, and how
to fix it. Every message is scrubbed of passwords here, at the root. `exit_code` is the CLI's: 2 for
bad input or configuration, 1 for a failed check or deployment. Imports only `redact`.
"""
from __future__ import annotations

from schema_deploy.redact import scrub

# Where a person with Airflow sees what a CLI command would print (schema_deploy_airflow/ui.py): messages
# name it first, and the command after it for runs without Airflow.
PAGE = "the Schema deployments page (Browse → Schema deployments)"


def wrapped(text: str, width: int = 100, indent: str = "    ", first_offset: int = 0) -> str:
    """`text` for a person's screen: each of its lines wrapped at `width` columns, the continuation
    lines indented under it; words longer than a line (a URI, a path) are kept whole. `first_offset`:
    columns already taken on the first line by what is printed before it (a log's prefix)."""
    import textwrap

    out = []
    for i, line in enumerate(text.splitlines() or [""]):
        lead = line[:len(line) - len(line.lstrip())]
        taken = " " * first_offset if i == 0 else ""
        out.append(textwrap.fill(line.strip(), width, initial_indent=taken + lead, subsequent_indent=lead + indent,
                                 break_long_words=False, break_on_hyphens=False)[len(taken):]
                   if line.strip() else "")
    return "\n".join(out).strip("\n")


def is_transient(exc: BaseException) -> bool:
    """Worth an automatic retry: a lock not granted, a busy advisory lock, a lost connection, S3 or
    pg_dump trouble. Bad input, failed checks, failed gates and bad releases would fail the same way."""
    return not isinstance(exc, SchemaDeployError) or exc.transient


class SchemaDeployError(Exception):
    """Root of every error this package raises on purpose."""

    exit_code = 2
    # Worth an automatic retry (see `is_transient`): set by the few conditions that can pass on their own.
    transient = False

    def __init__(self, message: str) -> None:
        super().__init__(scrub(message))

    @property
    def message(self) -> str:
        return str(self)


class UsageError(SchemaDeployError):
    """Bad command-line input or configuration."""


def shorten(text: str, limit: int) -> str:
    """One line, at most `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
