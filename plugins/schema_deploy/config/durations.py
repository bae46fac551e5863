"""The one duration grammar: '2h', '90m', '1h30m', '45s', '7d', '2w' — deploy.yaml's windows, gate
timeout, schedule lead and fleet pauses, and the command line's `--older-than`, all read it here."""
from __future__ import annotations

from datetime import timedelta

from schema_deploy.errors import UsageError

UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
EXAMPLES = "'2h', '90m', '1h30m', '45s', '7d' or '2w'"


def parse_duration(text: str, what: str = "duration") -> timedelta:
    """'90m', '2h', '1h30m', '45s', '7d', '2w' → timedelta: numbers each followed by a unit (w, d, h, m,
    s). `what` names the setting or option in the message ("--older-than", "gate.timeout")."""
    total, number = 0, ""
    for ch in text.strip():
        if ch.isdigit():
            number += ch
        elif ch in UNITS and number:
            total += int(number) * UNITS[ch]
            number = ""
        else:
            raise UsageError(f"{what} {text!r}: write it as numbers with units (w, d, h, m, s), such as {EXAMPLES}.")
    if number or not text.strip():
        raise UsageError(f"{what} {text!r}: add a unit (w, d, h, m or s) after {number or 'a number'}, "
                         f"such as {EXAMPLES}.")
    return timedelta(seconds=total)


def fmt(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def format_duration(delta: timedelta) -> str:
    """timedelta → '2h', '1h30m', '45s': the inverse of parse_duration, in whole seconds."""
    hours, rest = divmod(int(delta.total_seconds()), 3600)
    minutes, seconds = divmod(rest, 60)
    return "".join(f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (seconds, "s")) if n) or "0s"
