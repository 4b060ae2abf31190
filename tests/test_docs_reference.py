"""The documentation: the generated reference pages are current, and every relative link resolves."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT / "tools" / "gen_reference.py"
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])


@pytest.fixture(scope="module")
def generator(load_tool: Callable[[str], ModuleType]) -> ModuleType:
    return load_tool("gen_reference")


def test_reference_pages_are_current(generator: ModuleType) -> None:
    for path, text in generator.render_all().items():
        committed = (ROOT / path).read_text(encoding="utf-8")
        assert committed == text, f"{path} is out of date: run python tools/gen_reference.py"


def test_reference_covers_every_subcommand_and_config_key(generator: ModuleType) -> None:
    from medseg.cli import build_parser
    from medseg.config import Config

    pages = generator.render_all()
    cli = pages[generator.CLI_PAGE]
    for prog, _parser, _help, depth in generator._walk("medseg", build_parser(), "", 0):
        if depth:
            assert f"## {prog}\n" in cli, f"{prog} missing"
    chunks = {c.split("\n", 1)[0]: c for c in pages[generator.CONFIG_PAGE].split("\n## ")}
    config = Config()
    for field in dataclasses.fields(config):
        section = getattr(config, field.name)
        if not dataclasses.is_dataclass(section):
            assert f"| `{field.name}` |" in chunks["Top level"], f"{field.name} missing"
            continue
        for key in dataclasses.fields(section):
            assert f"| `{key.name}` |" in chunks[field.name], f"{field.name}.{key.name} missing"


def test_check_names_a_stale_page(generator: ModuleType, tmp_path: Path) -> None:
    generator.write_pages(tmp_path)
    assert generator.stale_pages(tmp_path) == []
    page = tmp_path / generator.CLI_PAGE
    page.write_text(page.read_text(encoding="utf-8").replace("--nsd-tolerance", "--tolerance"), encoding="utf-8")
    assert generator.stale_pages(tmp_path) == [generator.CLI_PAGE]


def test_check_command_passes_on_the_checkout() -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr


def _strip_code(text: str) -> str:
    """``text`` without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"(`+)(?:(?!\1).)+?\1", "", text)


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the headings of ``page`` (a repeated heading gets ``-1``, ``-2``, ...)."""
    seen: dict[str, int] = {}
    anchors = set()
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.MULTILINE):
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links(page: Path) -> list[str]:
    text = _strip_code(page.read_text(encoding="utf-8"))
    return re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for link in _links(page):
        if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", link):  # https:, mailto:, ...
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page.resolve()
        if not target.exists():
            broken.append(f"{link} (no such file)")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link} (no heading #{anchor} in {target.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {', '.join(broken)}"


def test_readme_is_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"
