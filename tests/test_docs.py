"""The README is a short map and docs/ holds one page per topic (docs/development.md,
"Documentation"): the README's layout tree lists exactly what ``segkit/`` holds, every docs
page is linked from the README, every relative link resolves, and every command block says
which test runs it or why none does; the blocks that say "run by tests/test_docs.py" run here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
DOCS = sorted((PROJECT_ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]  # the pages whose command blocks carry a marker
LINKED = [README, PROJECT_ROOT / "RESULTS.md", PROJECT_ROOT / "BENCHMARKS.md", *DOCS]
RUN_HERE = "run by tests/test_docs.py"
# [text](target) outside code; images ![alt](target) too
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
TEST_REFERENCE = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but - and _ dropped, spaces -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", re.sub(r"^```.*?^```", "", page.read_text(),
                                                     flags=re.S | re.M), flags=re.M)  # fmt: skip
    return {slug(h) for h in headings}


def command_blocks(page: Path) -> list[tuple[int, str, str]]:
    """Every ```bash block of a page: (line number, the marker comment just above, code)."""
    lines = page.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            above = lines[i - 1].strip() if i else ""
            comment = above.startswith("<!--") and above.endswith("-->")
            marker = above[4:-3].strip() if comment else ""
            blocks.append((i + 1, marker, "\n".join(lines[i + 1 : end]) + "\n"))
            i = end
        i += 1
    return blocks


def test_readme_is_a_map_of_at_most_200_lines():
    assert len(README.read_text().splitlines()) <= 200


def test_readme_layout_tree_lists_exactly_the_packages_and_root_modules_of_segkit():
    section = README.read_text().split("\n## Layout\n", 1)[1]
    tree = section.split("```\n", 2)[1].splitlines()
    start = tree.index("segkit/")
    listed = []
    for line in tree[start + 1 :]:
        if not line.startswith("  "):
            break
        listed.append(line.split()[0])
    segkit = PROJECT_ROOT / "segkit"
    present = [p.name + "/" for p in segkit.iterdir() if (p / "__init__.py").is_file()]
    present += [p.name for p in segkit.glob("*.py")]
    assert sorted(listed) == sorted(present)
    assert len(listed) == len(set(listed))


def test_every_docs_page_is_linked_from_the_readme():
    targets = {target.split("#")[0] for target in LINK.findall(prose(README.read_text()))}
    unlinked = [page.name for page in DOCS if f"docs/{page.name}" not in targets]
    assert DOCS and not unlinked, f"docs pages the README does not link: {unlinked}"


@pytest.mark.parametrize("page", LINKED, ids=lambda p: p.relative_to(PROJECT_ROOT).as_posix())
def test_relative_links_resolve(page):
    """Every relative link names an existing file; a link into the README or a docs page
    names an existing heading there (RESULTS.md and BENCHMARKS.md anchors are theirs)."""
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and file in PAGES and anchor not in anchors(file):
            broken.append(target)
    assert not broken, f"links in {page.name} that resolve to nothing: {broken}"


def test_the_anchor_rule_is_githubs():
    assert slug("Your own data (`data=folder`)") == "your-own-data-datafolder"
    assert slug("ISBI 2012 EM (`data=isbi2012`, `experiment=isbi2012_unet`)") == (
        "isbi-2012-em-dataisbi2012-experimentisbi2012_unet"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(PROJECT_ROOT).as_posix())
def test_every_command_block_names_its_test_or_why_none_runs_it(page):
    """The comment above each ```bash block starts with "tested:" (naming each test that runs
    the commands, shrunken or on fake data), "not run:" (with the reason), or says that this
    module runs it; every test it names exists."""
    for line, marker, _ in command_blocks(page):
        where = f"{page.name}:{line}"
        assert marker.startswith(("tested:", "not run:", RUN_HERE)), f"{where}: no marker"
        if marker.startswith("tested:"):
            assert TEST_REFERENCE.search(marker), f"{where}: 'tested:' names no test"
        for file, name in TEST_REFERENCE.findall(marker):
            source = PROJECT_ROOT / file
            assert source.is_file(), f"{where}: {file} does not exist"
            assert re.search(rf"^def {name}\(", source.read_text(), re.M), (
                f"{where}: {file} has no test {name}"
            )


RUN_HERE_BLOCKS = [
    pytest.param(code, id=f"{page.name}:{line}")
    for page in PAGES
    for line, marker, code in command_blocks(page)
    if marker.startswith(RUN_HERE)
]


def test_some_blocks_run_here():
    assert RUN_HERE_BLOCKS


@pytest.mark.slow
@pytest.mark.parametrize("code", RUN_HERE_BLOCKS)
def test_documented_block_runs_as_written(code):
    """The block in bash from the project root, with this interpreter as ``python``."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-e", "-c", code], cwd=PROJECT_ROOT, env=env,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip()
