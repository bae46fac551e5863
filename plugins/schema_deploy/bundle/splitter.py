"""Cut a migration file into statements as psql does, and prove that every character is accounted for.

psql reads a file with PostgreSQL's lexical rules (quoted strings, E'' strings,
dollar quotes, quoted identifiers, nested /* */ comments, -- comments) and sends
one statement at a time, ending a statement at a `;` outside parentheses. Inside
`CREATE [OR REPLACE] FUNCTION|PROCEDURE … BEGIN ATOMIC … END` it keeps the
body's `;`s, counting BEGIN/CASE … END words as its own lexer does
(`src/bin/psql/psqlscan.l`). This module does the same in one pass over the
text, so a file goes to PostgreSQL's parser (pglast) one statement at a time:
memory stays proportional to one statement, and positions are counted as the
pass goes (linear in the file's size).

Every character ends up in a piece (a statement, from its first token to its
last, comments inside it included) or in a gap between pieces. `account()`
proves the gaps hold nothing but whitespace, comments and `;`, and the parser
proves each piece is statements; together they cover every byte of the file,
so nothing of a file is ever silently skipped. A NUL character is refused
before anything else: PostgreSQL cannot take one in SQL text, and C libraries
(libpq, the parser) stop reading at it.

The pass also notes each `;` that Prisma's driver-adapter splitter cuts at but
PostgreSQL does not (inside a comment, a string, a dollar-quoted body, a quoted
identifier or a BEGIN ATOMIC body), for the `prisma-splitter-semicolon` rule,
and refuses psql meta-commands (`\\copy`, `\\i`, …), which are not SQL.
"""
from __future__ import annotations

import re
import unicodedata
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field

WHITESPACE = " \t\n\r\f\v"  # PostgreSQL's lexer: `space [ \t\n\r\f\v]`
# PostgreSQL counts every non-ASCII byte as a letter. The classes are written as "every character but
# these ASCII ones" because a range up to U+10FFFF costs re.compile ~10 ms a pattern, at every start
# of a `lint` call (a pre-commit hook pays it for each file it lints).
_IDENT_START = r"[^\x00-\x40\x5b-\x5e\x60\x7b-\x7f]"  # A-Z a-z _ and all non-ASCII
_IDENT_CONT = r"[^\x00-\x23\x25-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]"  # and 0-9 $
_DOLLAR_CONT = r"[^\x00-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]"  # a dollar tag: no $
_PUNCTUATION = r"[\x00-\x08\x0e-\x1f!#%&*+,.:<=>?@\[\]^`{|}~\x7f]"  # ASCII that is none of the above nor special

# Everything at the start of a statement, and in CREATE FUNCTION/PROCEDURE statements, is read
# token by token (psql's BEGIN ATOMIC rule needs the words); elsewhere `_SKIP` jumps over runs
# of characters that cannot change where a statement ends.
_TOKEN = re.compile(rf"""
    (?P<space>[{WHITESPACE}]+)
  | (?P<word>{_IDENT_START}{_IDENT_CONT}*)
  | (?P<number>[0-9]+)
  | (?P<special>['"$;()\\/\-])
  | (?P<other>{_PUNCTUATION}+)
""", re.X)
_SKIP = re.compile(r"""[^'"$;()\\/\-]+""")
_STRING_END = re.compile(r"[^']*(?:''[^']*)*'")  # after the opening quote; '' is a quote inside
_ESCAPE_STRING_END = re.compile(r"[^'\\]*(?:(?:\\.|'')[^'\\]*)*'", re.S)
_QUOTED_IDENT_END = re.compile(r'[^"]*(?:""[^"]*)*"')
_DOLLAR_TAG = re.compile(rf"\$(?:{_IDENT_START}{_DOLLAR_CONT}*)?\$")
_LINE_COMMENT_END = re.compile(r"[^\n\r]*")
_IDENT_CHAR = re.compile(_IDENT_CONT)
_BLOCK_MARK = re.compile(r"/\*|\*/")
_GAP = re.compile(rf"(?:[{WHITESPACE};]+|--[^\n\r]*)*")
_FUNCTION_WORDS = {"create": "c", "function": "f", "procedure": "p", "or": "o", "replace": "r"}


@dataclass(frozen=True, slots=True)
class Piece:
    """One statement as psql sends it: `text[start:end]`, from its first token to its last."""

    start: int
    end: int
    line: int
    column: int


@dataclass(frozen=True, slots=True)
class Cut:
    """A `;` that Prisma's splitter ends a statement at but PostgreSQL reads as part of one."""

    offset: int
    line: int
    column: int
    kind: str  # a key of lint.rules.prisma.KINDS


CUT_KINDS = ("line-comment", "line-comment-in-statement", "block-comment", "string", "escape-string",
             "dollar-quoted", "quoted-identifier", "atomic-body")


@dataclass(frozen=True)
class Split:
    """A file cut into pieces, with the `;`s Prisma would cut at. A data seed may hold a million `;`s in
    its strings, so they are kept compactly: offsets in order, and each one's kind as an index."""

    text: str
    pieces: list[Piece]
    cut_offsets: array = field(default_factory=lambda: array("q"))
    cut_kinds: bytearray = field(default_factory=bytearray)
    problem: SplitProblem | None = None  # a psql meta-command: the pass stopped at its statement
    stopped_at: int | None = None

    @property
    def limit(self) -> int:
        """How far the pieces go: the end of the text, or the statement the pass stopped in."""
        return len(self.text) if self.stopped_at is None else self.stopped_at

    def cuts(self) -> Iterator[Cut]:
        """The cuts in order, with their lines and columns."""
        lines = Lines(self.text)
        for at, kind in zip(self.cut_offsets, self.cut_kinds):
            yield Cut(at, *lines.at(at), CUT_KINDS[kind])


class SplitProblem(Exception):
    """Something in the text that is not SQL: `what` is at `offset`; `fix` says what to do."""

    def __init__(self, code: str, offset: int, line: int, column: int, what: str, fix: str) -> None:
        self.code, self.offset, self.line, self.column, self.what, self.fix = code, offset, line, column, what, fix
        super().__init__(f"{line}:{column}: {what}")


class Lines:
    """Line and column of increasing offsets, counted incrementally (each character read once)."""

    def __init__(self, text: str) -> None:
        self.text, self.pos, self.line, self.line_start = text, 0, 1, 0

    def at(self, offset: int) -> tuple[int, int]:
        """1-based line and column (in characters) of `offset`, which must not precede the last one asked."""
        if offset < self.pos:  # rare (an error inside a piece already passed): count from the start
            self.pos, self.line, self.line_start = 0, 1, 0
        text = self.text
        newlines = text.count("\n", self.pos, offset)
        if newlines:
            self.line += newlines
            self.line_start = text.rfind("\n", self.pos, offset) + 1
        self.pos = offset
        return self.line, offset - self.line_start + 1


def describe_char(ch: str) -> str:
    """`U+0000 (NUL)`-style name of a character, for messages about odd bytes."""
    name = unicodedata.name(ch, None) or {"\x00": "NUL"}.get(ch) or "a control character"
    encoded = " ".join(f"0x{b:02x}" for b in ch.encode("utf-8", "surrogatepass"))
    return f"U+{ord(ch):04X} ({name}; bytes {encoded})"


def check_nul(text: str) -> None:
    """Refuse a NUL character anywhere: PostgreSQL cannot receive it, and C code stops reading at it."""
    at = text.find("\x00")
    if at >= 0:
        line, column = Lines(text).at(at)
        raise SplitProblem(
            "nul-byte", at, line, column, "a NUL byte (0x00)",
            "Remove it (an editor or a bad merge can leave one; `tr -d '\\000'` does): PostgreSQL cannot take a "
            "NUL in SQL text, and tools that read the file as a C string stop at it, silently dropping "
            "everything after it.")


def split(text: str) -> Split:
    """The pieces of `text` in order, as psql would send them, with Prisma's extra cuts."""
    check_nul(text)
    return _Splitter(text).run()


class _Splitter:
    """The one pass: state of the statement being read, and what has been found."""

    def __init__(self, text: str) -> None:
        self.text, self.n = text, len(text)
        self.lines = Lines(text)
        self.pieces: list[Piece] = []
        self.cut_offsets, self.cut_kinds = array("q"), bytearray()
        self.problem: SplitProblem | None = None
        self.stopped_at: int | None = None
        self.new_statement()

    def new_statement(self) -> None:
        self.start: int | None = None  # first token of the statement being read
        self.code_end = 0  # end of its last token that is not a comment
        self.paren = self.begin_depth = 0
        self.words: list[str] = []  # first letters of its first four words (psql's `identifiers`)
        self.function: bool | None = None  # CREATE [OR REPLACE] FUNCTION|PROCEDURE? None: not known yet

    # --- the statement being read ------------------------------------------------------------

    def code(self, start: int, end: int) -> None:
        """Characters that are part of a statement (not whitespace, not a comment)."""
        if self.start is None:
            self.start = start
        self.code_end = end

    def word(self, start: int, end: int) -> None:
        """psql's rule: a statement that starts CREATE [OR REPLACE] FUNCTION|PROCEDURE keeps the `;`s of
        a BEGIN … END body (CASE … END nests inside it); words are only counted at parenthesis depth 0."""
        if self.function is None:
            self.words.append(_FUNCTION_WORDS.get(self.text[start:end].lower(), ""))
            self.function = function_statement(self.words)
        if self.function and self.paren == 0:
            word = self.text[start:end].lower()
            if word == "begin":
                self.begin_depth += 1
            elif word == "case" and self.begin_depth:
                self.begin_depth += 1
            elif word == "end" and self.begin_depth:
                self.begin_depth -= 1

    def end_statement(self) -> None:
        if self.start is not None:
            line, column = self.lines.at(self.start)
            self.pieces.append(Piece(self.start, self.code_end, line, column))
        self.new_statement()

    # --- the pass --------------------------------------------------------------------------

    def run(self) -> Split:
        text, n, pos = self.text, self.n, 0
        while pos < n and self.problem is None:
            if self.function is False:  # nothing but quotes, comments, parentheses and `;` matter now
                m = _SKIP.match(text, pos)
                if m:
                    end = m.end()
                    last = end
                    while last > pos and text[last - 1] in WHITESPACE:
                        last -= 1
                    if last > pos:
                        self.code(pos, last)
                    pos = end
                    continue
                pos = self.special(pos)
                continue
            m = _TOKEN.match(text, pos)
            kind, end = m.lastgroup, m.end()
            if kind == "space":
                pos = end
            elif kind == "word":
                self.code(pos, end)
                self.word(pos, end)
                pos = end
            elif kind in ("number", "other"):
                self.code(pos, end)
                pos = end
            else:
                pos = self.special(pos)
        self.end_statement()
        return self.result()

    def special(self, pos: int) -> int:
        """Handle the character at `pos` (one of ' " $ ; ( ) \\ / -); return where reading goes on."""
        text, ch = self.text, self.text[pos]
        nxt = text[pos + 1: pos + 2]
        if ch == ";":
            if self.paren == 0 and self.begin_depth == 0:
                self.end_statement()
            else:
                if self.begin_depth:
                    self.cut(pos, "atomic-body")
                self.code(pos, pos + 1)
            return pos + 1
        if ch == "-" and nxt == "-":
            end = _LINE_COMMENT_END.match(text, pos + 2).end()
            self.semicolons_in(pos, end, "line-comment")
            return end
        if ch == "/" and nxt == "*":
            end = self.block_comment_end(pos)
            self.semicolons_in(pos, end, "block-comment")
            return end
        if ch == "'":
            escape = self.prefixed(pos, "eE")
            pattern = _ESCAPE_STRING_END if escape else _STRING_END
            return self.quoted(pos, pattern, "escape-string" if escape else "string")
        if ch == '"':
            return self.quoted(pos, _QUOTED_IDENT_END, "quoted-identifier")
        if ch == "$":
            tag = _DOLLAR_TAG.match(text, pos)
            if tag and not self.inside_identifier(pos):
                close = text.find(tag.group(), tag.end())
                end = self.n if close < 0 else close + len(tag.group())
                self.code(pos, end)
                self.semicolons_in(pos, end, "dollar-quoted")
                return end
        elif ch == "(":
            self.paren += 1
        elif ch == ")":
            self.paren = max(0, self.paren - 1)
        elif ch == "\\":
            line, column = self.lines.at(pos)
            command = re.match(r"\\[A-Za-z!?;.]*[+]?", text[pos:pos + 40]).group() or "\\"
            # Stop here, keeping the statements before it: a COPY … FROM STDIN among them is the cause.
            self.problem = SplitProblem(
                "psql-meta-command", pos, line, column, f"psql meta-command `{command}`",
                "Meta-commands are read by psql, not by PostgreSQL, and a migration runner sends SQL only: write "
                "the data as INSERT statements (or COPY … FROM a file the server can read), and put the file's "
                "SQL itself in the migration instead of `\\i`/`\\include`.")
            self.stopped_at = pos if self.start is None else self.start
            self.start = None  # the statement it interrupts is not sent
            return self.n
        self.code(pos, pos + 1)
        return pos + 1

    def quoted(self, pos: int, pattern: re.Pattern, kind: str) -> int:
        m = pattern.match(self.text, pos + 1)
        end = m.end() if m else self.n  # unterminated: the rest is this statement; the parser says where
        self.code(pos, end)
        self.semicolons_in(pos, end, kind)
        return end

    def prefixed(self, pos: int, letters: str) -> bool:
        """Is the quote at `pos` right after a one-letter prefix in `letters` (E'…', as a word of its own)?"""
        text = self.text
        return (pos >= 1 and text[pos - 1] in letters
                and (pos == 1 or not _IDENT_CHAR.match(text, pos - 2)))

    def inside_identifier(self, pos: int) -> bool:
        """Is the `$` at `pos` part of an identifier (`a$b`), not the start of a dollar quote or parameter?"""
        i, text = pos, self.text
        while i > 0 and _IDENT_CHAR.match(text, i - 1):
            i -= 1
        run = text[i:pos]
        return bool(run) and not run.isdigit()

    def block_comment_end(self, pos: int) -> int:
        """End of the (nested) /* comment at `pos`; unterminated, the end of the text (the parser says so)."""
        end = block_end(self.text, pos, self.n)
        if end is not None:
            return end
        if self.start is None:
            self.start = pos  # an unterminated comment: make it a piece, so the parser reports it
        self.code_end = self.n
        return self.n

    def semicolons_in(self, start: int, end: int, kind: str) -> None:
        text = self.text
        at = text.find(";", start, end)
        while at >= 0:
            if kind == "line-comment" and blank_after(text[at + 1:end]):
                # Prisma's next piece starts with nothing of this comment: harmless between statements,
                # but inside one PostgreSQL receives the statement cut off here.
                if self.start is not None:
                    self.cut(at, "line-comment-in-statement")
            else:
                self.cut(at, kind)
            at = text.find(";", at + 1, end)

    def cut(self, at: int, kind: str) -> None:
        self.cut_offsets.append(at)  # in order: the pass only moves forward
        self.cut_kinds.append(CUT_KINDS.index(kind))

    def result(self) -> Split:
        return Split(self.text, self.pieces, self.cut_offsets, self.cut_kinds, self.problem, self.stopped_at)


def function_statement(words: list[str]) -> bool | None:
    """psql's test on the first letters of a statement's first words (`c`reate, `o`r, `r`eplace,
    `f`unction, `p`rocedure, '' for any other word): True for CREATE [OR REPLACE] FUNCTION|PROCEDURE,
    False once it cannot be, None while it still can."""
    w = words + [None] * (4 - len(words))
    if w[0] != "c":
        return False
    if w[1] is None:
        return None
    if w[1] in ("f", "p"):
        return True
    if w[1] != "o" or w[2] not in ("r", None):
        return False
    if w[3] is None:
        return None
    return w[3] in ("f", "p")


def blank_after(rest: str) -> bool:
    """Does nothing but blanks (or another -- comment) follow a `;` in a -- comment, up to its next `;`?
    Then the piece Prisma sends next starts with nothing of this comment."""
    tail = rest.split(";", 1)[0].strip()
    return tail == "" or tail.startswith("--")


def account(split_: Split) -> None:
    """Prove the gaps between pieces hold only whitespace, comments and `;`: raise SplitProblem naming
    the first character that is none of them (with the parser's check of each piece, this accounts
    for every character of the file)."""
    text, lines, pos, limit = split_.text, Lines(split_.text), 0, split_.limit
    for piece in [*split_.pieces, Piece(limit, limit, 0, 0)]:
        bad = gap_problem(text, pos, piece.start)
        if bad is not None:
            line, column = lines.at(bad)
            raise SplitProblem("unaccounted", bad, line, column,
                               f"{describe_char(text[bad])} is neither SQL, a comment nor whitespace",
                               "Remove the character or put it inside a comment or a string.")
        pos = piece.end


def gap_problem(text: str, start: int, end: int) -> int | None:
    """Offset of the first character in `text[start:end]` that is not whitespace, a comment or `;`."""
    pos = start
    while pos < end:
        pos = _GAP.match(text, pos, end).end()
        if pos >= end:
            return None
        if text.startswith("/*", pos):
            after = block_end(text, pos, end)
            if after is None:
                return pos
            pos = after
            continue
        return pos
    return None


def block_end(text: str, pos: int, end: int) -> int | None:
    """Just past the /* comment at `pos` (they nest, as in PostgreSQL), or None if it does not close
    before `end`."""
    depth, i = 0, pos
    for m in _BLOCK_MARK.finditer(text, pos, end):
        if m.start() < i:
            continue  # `/*/`: the `*` belongs to the opening mark
        depth += 1 if m.group() == "/*" else -1
        i = m.end()
        if depth == 0:
            return i
    return None
