"""`parse.parse_sql`, several times faster: pglast ASTs built from libpg_query's JSON.

`pglast.parse_sql` spends most of its time not in PostgreSQL's parser but in
building the Python AST: every attribute goes through `Node.__setattr__`,
which validates and coerces it (about 100 attribute sets per statement). On a
bundle of a thousand migrations that alone exceeds lint's two-second budget.
Here the same parser runs through `pglast.parser.parse_sql_json` (C, fast), and
the JSON becomes the very same `pglast.ast` classes, filled with the values
pglast's own constructors would set (enums as enum members, absent booleans
False, absent integers 0, absent chars NUL, locations as character indexes),
without the per-attribute validation.

The result is equal to `parse.parse_sql`'s (tests compare them statement by
statement, AST included, on the real bundle, a generated one and every lint
case). Anything unexpected (a parse error, a JSON shape not handled here)
falls back to `parse.parse_sql`, so errors are reported exactly as there.
"""
from __future__ import annotations

import enum
import json
from pathlib import Path

from pglast import ast, enums
from pglast import parser as pg_parser

from schema_deploy.bundle import Migration
from schema_deploy.errors import TransactionControlError
from schema_deploy.parse import Statement, classify, line_col, parse_sql, statement_kind

_SCALAR, _NODE, _LIST, _STRUCT, _ENUM, _LOC, _VALUE = range(7)
_VALUE_NODES = {"ival": "Integer", "fval": "Float", "boolval": "Boolean", "sval": "String", "bsval": "BitString"}
_DEFAULTS = {"bool": False, "char": "\x00", "char*": None}
_set = object.__setattr__
_SPECS: dict[str, tuple[type, list[tuple[str, str, int, object]]]] = {}


def _spec(name: str) -> tuple[type, list[tuple[str, str, int, object]]]:
    """How to fill each attribute of `ast.<name>` from its JSON object (computed once per class)."""
    cls = getattr(ast, name)
    fields = []
    for attr, info in cls.__slots__.items():
        ctype, key = info.c_type, attr.rstrip("_")  # `def_` is "def" in the JSON
        kind_of_enum, struct = getattr(enums, ctype, None), ctype.rstrip("*")
        if ctype == "ParseLoc":
            fields.append((attr, key, _LOC, None))
        elif ctype == "ValUnion":
            fields.append((attr, key, _VALUE, None))
        elif ctype in ("Node*", "Expr*"):
            fields.append((attr, key, _NODE, None))
        elif ctype == "List*":
            fields.append((attr, key, _LIST, None))
        elif isinstance(kind_of_enum, type) and issubclass(kind_of_enum, enum.Enum):
            fields.append((attr, key, _ENUM, kind_of_enum))
        elif ctype != "char*" and hasattr(ast, struct):
            fields.append((attr, key, _STRUCT, struct))
        else:  # numbers, chars, strings; other pointers (Bitmapset*) are absent from raw parse trees
            fields.append((attr, key, _SCALAR, _DEFAULTS.get(ctype, None if ctype.endswith("*") else 0)))
    _SPECS[name] = (cls, fields)
    return _SPECS[name]


class _Builder:
    """Turns one file's JSON parse tree into pglast nodes; maps byte offsets to character indexes."""

    def __init__(self, text: str) -> None:
        encoded_length = len(text.encode("utf-8"))
        self.max_offset = encoded_length - 1
        self.index = None if encoded_length == len(text) else [
            i for i, ch in enumerate(text) for _ in range(len(ch.encode("utf-8")))]

    def loc(self, offset: int) -> int | None:
        if not 0 <= offset <= self.max_offset:
            return None
        return offset if self.index is None else self.index[offset]

    def node(self, wrapped: dict) -> object:
        ((name, data),) = wrapped.items()
        if name == "List":
            return tuple([self.node(item) for item in data.get("items", ())])
        return self.fields(name, data)

    def fields(self, name: str, data: dict) -> ast.Node:
        cls, spec = _SPECS.get(name) or _spec(name)
        obj = cls.__new__(cls)
        for attr, key, kind, extra in spec:
            v = data.get(key)
            if kind == _SCALAR:
                value = extra if v is None else v
            elif kind == _LOC:
                value = None if name == "A_Const" else self.loc(v or 0)  # pglast leaves A_Const's unset
            elif kind == _LIST:
                value = None if v is None else tuple([self.node(item) for item in v])
            elif kind == _NODE:
                value = None if v is None else self.node(v)
            elif kind == _ENUM:
                value = extra(0) if v is None else extra[v]
            elif kind == _STRUCT:
                value = None if v is None else self.fields(extra, v)
            else:  # A_Const.val: whichever of ival/fval/boolval/sval/bsval is present
                value = None
                if not data.get("isnull"):
                    for vkey, vname in _VALUE_NODES.items():
                        if vkey in data:
                            value = self.fields(vname, data[vkey])
                            break
            _set(obj, attr, value)
        return obj


def fast_parse_sql(text: str, *, path: Path | str = "<sql>", migration: str = "") -> list[Statement]:
    """What `parse.parse_sql(text, ...)` returns, built faster; falls back to it on anything unusual."""
    try:
        tree = json.loads(pg_parser.parse_sql_json(text))
        builder = _Builder(text)
        raws = [(builder.node(item["stmt"]), item.get("stmt_location", 0), item.get("stmt_len", 0))
                for item in tree.get("stmts", ())]
    except (pg_parser.ParseError, KeyError, TypeError, ValueError, AttributeError):
        return parse_sql(text, path=path, migration=migration)
    path = Path(path)
    statements = []
    for i, (node, location, length) in enumerate(raws, start=1):
        start = builder.loc(location) or 0
        end = builder.loc(location + length) if length else None
        sql = text[start:end].strip() if length else text[start:].strip()
        line, col = line_col(text, start)
        stmt = Statement(migration=migration, path=path, index=i, line=line, column=col,
                         sql=sql, node=node, kind=statement_kind(sql))
        if isinstance(node, ast.TransactionStmt):
            raise TransactionControlError(path, line, sql.split()[0].upper())
        classify(stmt)
        statements.append(stmt)
    return statements


def fast_parse_migration(migration: Migration) -> list[Statement]:
    """`parse.parse_migration`, faster."""
    return fast_parse_sql(migration.sql, path=migration.path, migration=migration.name)
