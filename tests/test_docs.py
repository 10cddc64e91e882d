"""The documentation stands on its own: every relative link resolves inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# [text](target) and ![alt](target), not inside inline code; a title after a space is dropped.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*_]{1,2}(?=\S)|(?<=\S)[`*_]{1,2}", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    text = CODE.sub("", text)
    return LINK.findall(text)


def broken(path: Path) -> list[str]:
    found = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.is_relative_to(ROOT):
            found.append(f"{target}: outside the repository")
        elif not dest.exists():
            found.append(f"{target}: {dest.relative_to(ROOT)} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            found.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    return found


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_every_relative_link_resolves_inside_the_repository(path: Path) -> None:
    assert broken(path) == []


def test_the_checker_catches_what_it_must(tmp_path: Path) -> None:
    page = ROOT / "docs" / "_link_probe.md"
    page.write_text("# Title here\n[ok](#title-here) [a](../../outside.md) [b](nope.md)\n"
                    "[c](api.md#no-such-heading) `[d](ignored.md)` [e](https://x.org)\n")
    try:
        assert broken(page) == [
            "../../outside.md: outside the repository",
            "nope.md: docs/nope.md does not exist",
            "api.md#no-such-heading: no heading #no-such-heading in docs/api.md",
        ]
    finally:
        page.unlink()


def test_the_docs_pages_are_all_linked_from_the_readme() -> None:
    readme = {(ROOT / t.partition("#")[0]).resolve() for t in links(ROOT / "README.md")}
    missing = [p.name for p in DOCS[1:] if p.resolve() not in readme]
    assert missing == []


def test_the_plugin_guide_shows_what_new_plugin_writes(tmp_path: Path) -> None:
    from core.scaffold import create

    root = create("echo", tmp_path)
    guide = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```(?:python|toml)\n# (\S+)\n(.*?)^```", guide, re.S | re.M)
    assert len(blocks) >= 6
    for name, body in blocks:
        text = (root / name).read_text(encoding="utf-8")
        assert body in text, f"docs/plugins.md shows a {name} that new-plugin does not write"


def test_the_plugin_api_reference_lists_every_field_of_the_plugin_types() -> None:
    """docs/plugin-api.md has a row for each field of ComponentInfo, Launch and Probe."""
    import dataclasses

    from core import ComponentInfo, Launch, Probe

    text = (ROOT / "docs" / "plugin-api.md").read_text(encoding="utf-8")
    missing = []
    for kind in (ComponentInfo, Launch, Probe):
        section = text.split(f"### `{kind.__name__}`", 1)[1].split("\n### ", 1)[0]
        missing += [f"{kind.__name__}.{f.name}" for f in dataclasses.fields(kind)
                    if f"| `{f.name}` |" not in section]
    assert missing == []
