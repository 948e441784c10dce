"""The documentation site builds with ``mkdocs build --strict``: every page in the nav exists, every link
between pages resolves, and every page is in the nav."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
LINK_OUT_OF_DOCS = re.compile(r"\]\((\.\./[^)#\s]+)(#[^)]*)?\)")


def staged_docs(tmp_path: Path) -> Path:
    """A copy of the site in which links out of docs/ (to the repository's own files, for readers on a
    forge) are checked to exist and then dropped, since mkdocs cannot resolve them."""
    stage = tmp_path / "stage"
    shutil.copytree(ROOT / "docs", stage / "docs")
    shutil.copy(ROOT / "mkdocs.yml", stage / "mkdocs.yml")
    for page in (stage / "docs").glob("*.md"):
        text = page.read_text()
        for link, _anchor in LINK_OUT_OF_DOCS.findall(text):
            assert (ROOT / "docs" / link).resolve().exists(), f"{page.name} links to missing {link}"
        page.write_text(LINK_OUT_OF_DOCS.sub(lambda m: "](" + "https://example.invalid/" + m.group(1)[3:] + ")",
                                             text))
    return stage


def test_site_builds_strictly(tmp_path: Path) -> None:
    stage = staged_docs(tmp_path)
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(stage / "mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for page in ("index", "profiles", "pools", "cli", "architecture", "spawn", "security", "limits", "benchmarks"):
        assert (site / ("index.html" if page == "index" else f"{page}/index.html")).exists(), page
    html = (site / "index.html").read_text()
    assert "aiogaol.spawn" in html
    # Nothing in the built site is fetched from the network.
    assert "cdnjs" not in html and "googleapis" not in html


def test_documented_cli_flags_exist() -> None:
    from aiogaol._cli import make_parser

    text = (ROOT / "docs" / "cli.md").read_text()
    documented = set(re.findall(r"`(--[a-z-]+)", text))
    parser = make_parser()
    known: set[str] = set()
    for action in parser._subparsers._group_actions[0].choices.values():  # type: ignore[union-attr]
        for a in action._actions:
            known.update(o for o in a.option_strings if o.startswith("--"))
    assert documented <= known, documented - known


def test_the_steps_in_spawn_md_are_the_c_cores_in_its_order() -> None:
    """docs/spawn.md numbers the steps of a spawn as AIOGAOL_STEPS (jail.h) does, which every failure and
    timing mark names: the list there is the C core's, in its order, with nothing missing or extra."""
    from aiogaol import _ffi

    c_steps = []
    while (name := _ffi.step_name(len(c_steps) + 1)) != "unknown step":
        c_steps.append(name)
    section = (ROOT / "docs" / "spawn.md").read_text().split("### The steps", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^(\d+)\. (.+)$", section, re.M)
    assert [int(n) for n, _ in documented] == list(range(1, len(documented) + 1))
    # A line may go on after the name, in parentheses, to say more.
    assert [re.sub(r" \((?:a timing|instead of).*\)$", "", text) for _, text in documented] == c_steps
