"""Fixtures shared by the integration tests."""
from __future__ import annotations

import subprocess

import pytest
from engine_support import REPO
from prisma_support import Prisma, PrismaUnavailable, ensure_prisma

from schema_deploy.cli.main import main


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """Run `python -m schema_deploy ARGS` in-process from the repository root: (exit code, stdout, stderr)."""
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("DATABASE_URL", raising=False)

    def run(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


@pytest.fixture(scope="session")
def prisma() -> Prisma:
    """The real Prisma CLI of tests/prisma, installed by `npm ci` once if needed (see prisma_support.py)."""
    try:
        return Prisma(ensure_prisma())
    except PrismaUnavailable as exc:
        pytest.fail(str(exc))
