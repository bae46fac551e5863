"""PostgreSQL's parser on one piece of SQL, its tree built as pglast ASTs several times faster.

`pglast.parse_sql` spends most of its time not in PostgreSQL's parser but in
building the Python AST: every attribute goes through `Node.__setattr__`,
which validates and coerces it (about 100 attribute sets per statement), and
it converts offsets to characters in a way that grows with the square of a
non-ASCII text's length. Here the same parser runs through
`pglast.parser.parse_sql_json` (C, fast), and the JSON becomes the very same
`pglast.ast` classes, filled with the values pglast's own constructors would
set (enums as enum members, absent booleans False, absent integers 0, absent
chars NUL, locations as character offsets into the piece), without the
per-attribute validation.

`parse.py` hands this one statement at a time (the splitter's pieces), so the
JSON and the tree never hold more than one statement. The tests compare the
result with `pglast.parse_sql` statement by statement, AST included. A JSON
shape not handled here falls back to `pglast.parse_sql` for that piece.
"""
from __future__ import annotations

import bisect
import enum
import json
import re

import pglast
from pglast import ast, enums
from pglast import parser as pg_parser

_SCALAR, _NODE, _LIST, _STRUCT, _ENUM, _LOC, _VALUE = range(7)
_VALUE_NODES = {"ival": "Integer", "fval": "Float", "boolval": "Boolean", "sval": "String", "bsval": "BitString"}
_DEFAULTS = {"bool": False, "char": "\x00", "char*": None}
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_set = object.__setattr__
_SPECS: dict[str, tuple[type, list[tuple[str, str, int, object]]]] = {}

ParseError = pg_parser.ParseError


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


class Offsets:
    """Byte offsets (what libpg_query reports) to character offsets, for one piece of text.

    ASCII text needs nothing; otherwise only the non-ASCII characters are recorded (their byte
    starts and the extra bytes before them), never an entry per byte.
    """

    def __init__(self, text: str) -> None:
        self.size = len(text.encode("utf-8")) if not text.isascii() else len(text)
        self.starts: list[int] = []  # byte offset of each non-ASCII character
        self.extra: list[int] = [0]  # extra bytes of the first k non-ASCII characters
        if self.size != len(text):
            for m in _NON_ASCII.finditer(text):
                self.starts.append(m.start() + self.extra[-1])
                self.extra.append(self.extra[-1] + len(m.group().encode("utf-8")) - 1)

    def char(self, offset: int) -> int | None:
        """The character offset of a byte offset (None outside the text, as pglast leaves it)."""
        if not 0 <= offset < self.size:
            return None
        if not self.starts:
            return offset
        return offset - self.extra[bisect.bisect_left(self.starts, offset)]


class _Builder:
    """Turns one piece's JSON parse tree into pglast nodes."""

    def __init__(self, offsets: Offsets) -> None:
        self.offsets = offsets

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
                value = None if name == "A_Const" else self.offsets.char(v or 0)  # pglast leaves A_Const's unset
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


def parse_statements(sql: str, skip: frozenset[str] = frozenset()) -> list[tuple[object, int, int]]:
    """The statements of `sql` as (AST, start, end) character offsets into it (end exclusive,
    surrounding whitespace and comments included between statements). Raises `ParseError`
    (message, character offset or None at the end of input) as pglast does.

    A statement whose node type is named in `skip` is not built: it comes as (its pglast class,
    its JSON object), for callers that read a field or two of it (a data seed's INSERTs)."""
    tree = json.loads(pg_parser.parse_sql_json(sql))
    offsets = Offsets(sql)
    builder = _Builder(offsets)
    out: list[tuple[object, int, int]] = []
    try:
        for item in tree.get("stmts", ()):
            location, length = item.get("stmt_location", 0), item.get("stmt_len", 0)
            start = offsets.char(location) or 0
            end = (offsets.char(location + length) if location + length < offsets.size else len(sql)) \
                if length else len(sql)
            ((name, data),) = item["stmt"].items()
            out.append(((getattr(ast, name), data) if name in skip else builder.node(item["stmt"]), start, end))
    except (KeyError, TypeError, ValueError, AttributeError):  # a JSON shape this builder does not know
        out = [(raw.stmt, raw.stmt_location or 0, (raw.stmt_location or 0) + raw.stmt_len if raw.stmt_len
                else len(sql)) for raw in pglast.parse_sql(sql)]
    return out


def parse_one(sql: str) -> ast.Node:
    """The AST of one statement's text (what `Statement.node` rebuilds when it did not keep it)."""
    return parse_statements(sql)[0][0]
