"""The README, the changelog and the pages in docs/ hold together: every relative link and
image points at a file that exists, every ``#anchor`` names a heading of its page (as GitHub
slugs it), and the README stays a short entry page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
# [text](target "title") and ![alt](target); the text may hold one level of brackets
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'][^)]*[\"'])?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
HTML = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
ANCHOR_TAG = re.compile(r"<a\s+[^>]*\b(?:name|id)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where nothing is a link."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its rendered text, lowercased, spaces to ``-``, every
    character but letters, digits, ``-`` and ``_`` removed."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor GitHub gives ``page``: one per heading (repeats get ``-1``, ``-2``, ...),
    plus explicit ``<a name=...>`` / ``id=...`` tags."""
    text = FENCE.sub("", page.read_text())
    seen: dict[str, int] = {}
    found = set(ANCHOR_TAG.findall(text))
    for _, heading in HEADING.findall(text):
        base = slug(heading)
        n = seen.get(base, 0)
        found.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return found


def links(page: Path) -> list[str]:
    """Every link target of ``page``: inline links, images, reference definitions, HTML."""
    text = _prose(page.read_text())
    return [*LINK.findall(text), *REFERENCE.findall(text), *HTML.findall(text)]


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """The relative links of ``page`` that do not resolve, each with the reason (paths shown
    relative to ``root``, which no link may leave)."""
    problems = []
    for target in links(page):
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue  # https:, mailto:, ... : not ours to check
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if path and not dest.is_relative_to(root):
            problems.append(f"{target}: outside the repository")
        elif not dest.exists():
            problems.append(f"{target}: no such file {dest.relative_to(root)}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading #{anchor} in {dest.relative_to(root)}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_and_anchor_of_the_docs_resolves(page):
    assert broken_links(page) == []


def test_the_link_check_catches_a_missing_file_image_and_anchor(tmp_path):
    """The check above can fail: each kind of broken link on a page is caught, and nothing
    else is (web links and code are not links to check)."""
    (tmp_path / "other.md").write_text("# Other page\n\n## A `code` heading, with: punctuation\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## Two words\n\n## Two words\n\n"
        "[ok](#two-words) [ok](#two-words-1) [ok](other.md#a-code-heading-with-punctuation)\n"
        "[ok](other.md) ![ok](other.md) [web](https://example.com/nothing.md#nowhere)\n"
        "`[code](missing.md)`\n\n```\n[fenced](missing.md)\n```\n\n"
        "[gone](missing.md) ![img](missing.png) [bad anchor](#two_words)\n"
        "[bad there](other.md#other) [up](../outside.md)\n"
    )
    assert broken_links(page, root=tmp_path) == [
        "missing.md: no such file missing.md",
        "missing.png: no such file missing.png",
        "#two_words: no heading #two_words in page.md",
        "other.md#other: no heading #other in other.md",
        "../outside.md: outside the repository",
    ]


def test_github_slugs():
    assert slug("Sharp fits: what the defaults are made of") == (
        "sharp-fits-what-the-defaults-are-made-of"
    )
    assert slug("`model=rectified_flow` (`conf/model/rectified_flow.yaml`)") == (
        "modelrectified_flow-confmodelrectified_flowyaml"
    )
    assert slug("KL to the truth, and W2") == "kl-to-the-truth-and-w2"


def test_the_readme_is_an_entry_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
