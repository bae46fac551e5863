"""How a problem in deploy.yaml is worded, the same whoever finds it.

The typed model (`config/model.py`, pydantic) checks the whole file; `lint` reads only its two
sections (`lint:`, `prisma:`) without pydantic, whose import alone costs a pre-commit hook's call
170 ms. Both word their problems with these helpers, so a wrong value reads the same either way:
`deploy.yaml: prisma.deploys: expected true or false, got the string 'yes'. Write true or false, unquoted.`
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from schema_deploy.config.errors import ConfigError

EXPECTED = {
    "bool_type": "expected true or false", "int_type": "expected a whole number",
    "float_type": "expected a number", "string_type": "expected text",
    "dict_type": "expected a mapping (keys indented under it)", "model_type": "expected a mapping (keys indented under it)",
    "model_attributes_type": "expected a mapping (keys indented under it)", "list_type": "expected a list",
}
FIXES = {"bool_type": "Write true or false, unquoted", "int_type": "Write a whole number, unquoted",
         "float_type": "Write a number, unquoted", "dict_type": "Indent its keys under it",
         "model_type": "Indent its keys under it", "model_attributes_type": "Indent its keys under it",
         "list_type": "Write a list, e.g. [a, b]",
         "string_type": "Write it as text (quote it if YAML reads it as something else)"}


def described(value: Any) -> str:
    """How a message names a value it did not expect."""
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def dotted(parts: list[str | int]) -> str:
    """`lock.lock_retries`, `windows[0].cron`, `bundles['../up']`."""
    text = ""
    for p in parts:
        if isinstance(p, int) or not p.replace("_", "a").replace("-", "a").isalnum():
            text += f"[{p}]" if isinstance(p, int) else f"[{p!r}]"
        else:
            text += f".{p}" if text else p
    return text


def wrong_type(path: Path | str, where: list[str | int], kind: str, value: Any) -> ConfigError:
    """`key: expected …, got …. Fix.` for a value of the wrong kind (`kind`: pydantic's error type)."""
    return ConfigError(path, f"{dotted(where)}: {EXPECTED[kind]}, got {described(value)}", FIXES[kind] + ".")


def empty_text(path: Path | str, where: list[str | int]) -> ConfigError:
    return ConfigError(path, f"{dotted(where)}: expected text, got an empty string", "Give it a value, or leave the key out.")


def unknown_key(path: Path | str, where: list[str | int], siblings: list[str], elsewhere: list[str] = ()) -> ConfigError:
    """An unknown key, naming the valid key it most likely meant and where that one lives: a sibling with a
    close name, else the same name in another section (`elsewhere`: every key of the file, dotted)."""
    name = str(where[-1])
    section = dotted(where[:-1]) or "the top level"
    close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
    if close:
        fix = f"Did you mean {close[0]} (in {section})? Keys there: {', '.join(sorted(siblings))}."
    else:
        same = [p for p in elsewhere if p.rsplit(".", 1)[-1] == name]
        near = difflib.get_close_matches(name, [p.rsplit(".", 1)[-1] for p in elsewhere], n=1, cutoff=0.7)
        target = same[0] if same else next((p for p in elsewhere if near and p.rsplit(".", 1)[-1] == near[0]), None)
        if target:
            home = target.rsplit(".", 1)[0] if "." in target else "the top level"
            fix = f"Did you mean {target} (in section {home})? Move it there."
        else:
            fix = f"Keys {('in ' + section) if where[:-1] else 'at the top level'}: {', '.join(sorted(siblings))}."
    return ConfigError(path, f"{dotted(where)}: unknown key", fix)
