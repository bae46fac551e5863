"""The linter as a pre-commit hook, for real: pre-commit installs this repository as a hook (`pip install .`
from pyproject.toml, into its own environment) and runs it on the files a team's commit touches."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRE_COMMIT = Path(sys.executable).parent / "pre-commit"


@pytest.fixture(scope="module")
def team_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A team's repository with two Prisma migrations, one clean and one that takes a write-blocking lock."""
    root = tmp_path_factory.mktemp("team")
    for name, sql in {"20260101000000_init": 'CREATE TABLE "t" ("id" BIGINT PRIMARY KEY, "a" INT);\n',
                      "20260102000000_index": 'CREATE INDEX "t_a_idx" ON "t" ("a");\n'}.items():
        (root / "prisma" / "migrations" / name).mkdir(parents=True)
        (root / "prisma" / "migrations" / name / "migration.sql").write_text(sql)
    (root / "README.md").write_text("not a migration\n")
    git = ["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "migrations"], cwd=root, check=True)
    return root


def try_repo(cwd: Path, home: Path, *files: str) -> subprocess.CompletedProcess:
    """`pre-commit try-repo` of this repository's hook (uncommitted changes included) on `files`."""
    env = {**os.environ, "PRE_COMMIT_HOME": str(home), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)  # the hook must run from what pre-commit installed, not from our checkout
    return subprocess.run([str(PRE_COMMIT), "try-repo", str(REPO), "schema-deploy-lint", "--files", *files],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_pre_commit_installs_the_hook_and_it_fails_a_commit_with_a_blocking_finding(team_repo: Path,
                                                                                       tmp_path: Path) -> None:
    if not shutil.which("git"):
        pytest.fail("git is needed to try the pre-commit hook")
    home = tmp_path / "pre-commit-home"
    bad = try_repo(team_repo, home, "prisma/migrations/20260102000000_index/migration.sql", "README.md")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert ("prisma/migrations/20260102000000_index/migration.sql:1: error[require-concurrent-index] CREATE INDEX "
            'on "t" takes a SHARE lock') in bad.stdout
    assert "1 error(s), 0 warning(s), 0 info in 1 migration(s)" in bad.stdout  # README.md is not a migration

    good = try_repo(team_repo, home, "prisma/migrations/20260101000000_init/migration.sql")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "schema-deploy lint" in good.stdout and "Passed" in good.stdout
