"""The staging test gate: run the configured commands against staging, keep what they said.

Each command is an argv list from deploy.yaml (`gate.commands`), run with
`DATABASE_URL` set to the staging database, a timeout, and the project root as
working directory. `python`/`python3` as the program means this interpreter, so
the gate sees the deployment's own packages. The placeholder `{junit}` in an
argument is replaced by a fresh path for a JUnit XML report (pytest:
`--junitxml={junit}`); the report is parsed for the names of failing tests and
kept so the caller can upload it beside the backup.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

from schema_deploy.redact import scrub

JUNIT = "{junit}"


@dataclass
class JUnitSummary:
    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)  # "file::test" of each failing or erroring test


@dataclass
class CommandResult:
    command: str
    exit_code: int
    seconds: float
    output_tail: str
    junit_path: str | None = None
    junit: JUnitSummary | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def parse_junit(path: Path) -> JUnitSummary:
    """Counts and failing test names from a JUnit XML file (pytest's or any other runner's)."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    summary = JUnitSummary()
    for suite in suites:
        for case in suite.iter("testcase"):
            summary.tests += 1
            if case.find("skipped") is not None:
                summary.skipped += 1
            for kind in ("failure", "error"):
                if case.find(kind) is not None:
                    setattr(summary, kind + "s", getattr(summary, kind + "s") + 1)
                    where = case.get("file") or case.get("classname", "").replace(".", "/") + ".py"
                    summary.failed.append(f"{where}::{case.get('name')}")
    return summary


def run_commands(commands: list[tuple[str, ...]], *, database_url: str, cwd: Path, timeout_s: float,
                 workdir: Path, log=print) -> list[CommandResult]:
    """Run every gate command (all of them, even after a failure, so the report is complete)."""
    results = []
    for i, argv in enumerate(commands, 1):
        argv = list(argv)
        if argv and argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        junit = workdir / f"gate-{i}.junit.xml"
        uses_junit = any(JUNIT in a for a in argv)
        argv = [a.replace(JUNIT, str(junit)) for a in argv]
        shown = " ".join(commands[i - 1])
        log(f"gate command {i}/{len(commands)}: {shown}")
        t0 = time.monotonic()
        try:
            proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout_s,
                                  env={**os.environ, "DATABASE_URL": database_url})
            code, out = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            partial = exc.output or ""
            partial = partial.decode(errors="replace") if isinstance(partial, bytes) else partial
            code, out = -1, f"{partial}\ntimed out after {timeout_s:.0f} s (gate.timeout in deploy.yaml)"
        except OSError as exc:
            code, out = 127, f"could not start {argv[0]!r}: {exc.strerror}. Check gate.commands in deploy.yaml."
        result = CommandResult(command=shown, exit_code=code, seconds=round(time.monotonic() - t0, 2),
                               output_tail=scrub(out)[-3000:])
        if uses_junit and junit.exists():
            result.junit_path = str(junit)
            result.junit = parse_junit(junit)
        log(f"gate command {i} exited {code} after {result.seconds} s"
            + (f" ({result.junit.tests} tests, {len(result.junit.failed)} failing)" if result.junit else ""))
        results.append(result)
    return results
