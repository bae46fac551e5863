"""README.md and docs/*.md: every relative link leads somewhere, and the README stays one screen.

A link is `[text](path)` or `[text](path#anchor)` (images too) outside code; `http(s)://` and
`mailto:` links are not followed. A path is resolved against the linking file's folder and must
exist; an anchor must be the slug of a heading of the target markdown file, made as GitHub makes
it: lowercase, every character that is not a letter, digit, `_`, `-` or space dropped, spaces
become `-`, and a repeated slug gets `-1`, `-2`, … in order.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README_MAX_LINES = 200

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1)[^\n]|\n(?![ \t]*\n))+?\1")  # may span lines, not paragraphs
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)
SKIPPED = ("http://", "https://", "mailto:")


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def outside_fences(text: str) -> list[str]:
    """The text's lines with fenced code blocks blanked (line numbers kept)."""
    kept, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            kept.append("")
        else:
            kept.append("" if fenced else line)
    return kept


def prose(text: str) -> str:
    """The text with fenced code blocks and inline code spans blanked (line numbers kept)."""
    return INLINE_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), "\n".join(outside_fences(text)))


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link in a markdown file, in order; a link's text may span lines."""
    text = prose(path.read_text(encoding="utf-8"))
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in LINK.finditer(text)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (links in it read as their text, code as its content)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a markdown file offers: its headings' slugs (repeats numbered) and HTML anchors."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in outside_fences(path.read_text(encoding="utf-8")):
        found.update(HTML_ANCHOR.findall(line))
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def broken_links(path: Path) -> list[str]:
    """`file:line: target: why` for every relative link of `path` that leads nowhere."""
    problems = []
    for number, target in links(path):
        if target.lower().startswith(SKIPPED):
            continue
        file_part, _, anchor = target.partition("#")
        where = f"{shown(path)}:{number}: {target}"
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{where}: {file_part} does not exist")
            continue
        if anchor:
            if dest.suffix != ".md" or dest.is_dir():
                problems.append(f"{where}: an anchor into {file_part}, which is not a markdown file")
            elif anchor not in anchors(dest):
                problems.append(f"{where}: {dest.name} has no heading whose anchor is #{anchor}")
    return problems


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_leads_to_an_existing_file_and_heading(page: Path) -> None:
    problems = broken_links(page)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_docs_folder_has_pages_and_the_readme_links_to_each_of_them() -> None:
    pages = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    linked = {Path(target.partition("#")[0]).name for _, target in links(REPO / "README.md")
              if target.startswith("docs/")}
    assert pages and [p for p in pages if p not in linked] == [], "docs pages the README does not link to"


def test_the_readme_fits_on_one_screen_of_at_most_200_lines() -> None:
    count = len((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert count <= README_MAX_LINES, f"README.md has {count} lines; move reference material into docs/"


@pytest.mark.parametrize(("heading", "expected"), [
    ("Two commands", "two-commands"),
    ("Fleets on Celery (`--fleet-env FILE`)", "fleets-on-celery---fleet-env-file"),
    ("A fleet: `deploy_fleet` against a serial loop of the CLI (`bench/fleet.py`)",
     "a-fleet-deploy_fleet-against-a-serial-loop-of-the-cli-benchfleetpy"),
    ("The \"Schema deployments\" page (Airflow UI plugin)", "the-schema-deployments-page-airflow-ui-plugin"),
    ("See [Prisma](prisma.md) first", "see-prisma-first"),
])
def test_a_heading_anchor_is_made_as_github_makes_it(heading: str, expected: str) -> None:
    assert slug(heading) == expected


def test_a_repeated_heading_gets_a_numbered_anchor_and_headings_in_code_are_none(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Tests\n\n## Tests\n\n```sh\n# not a heading\n```\n")
    assert anchors(page) == {"tests", "tests-1"}


def test_a_broken_link_or_anchor_is_reported_with_its_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# Here we are\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](there.md#here-we-are) [web](https://example.com/x) [mail](mailto:a@b.c)\n"
                    "[gone](missing.md)\n"
                    "[bad anchor](there.md#nowhere) [self](#page)\n"
                    "`[in code](missing.md)`\n"
                    "```\n[in a block](missing.md)\n```\n")
    problems = broken_links(page)
    assert len(problems) == 3, problems
    assert problems[0].endswith(":2: missing.md: missing.md does not exist")
    assert ":3: there.md#nowhere: there.md has no heading whose anchor is #nowhere" in problems[1]
    assert ":3: #page: page.md has no heading whose anchor is #page" in problems[2]
