"""The repository stands alone: every document it cites is in it, every cited section
exists, and docs/theory.md has a section for every theorem function of theory.bounds."""
import re
import subprocess
from pathlib import Path

import pytest

from theory import bounds

ROOT = Path(__file__).resolve().parents[1]
DOCS = {"theory": ROOT / "docs" / "theory.md", "design": ROOT / "docs" / "design.md"}
#: files exempt from the reference checks (none: every document is checked)
PENDING: set = set()
QUOTES_OLD_TEXT: set = set()
TEXT_SUFFIXES = {".py", ".md", ".sh", ".yaml", ".toml", ".txt"}
# a cited document that is not in the repository, or the old citation forms
FOREIGN = re.compile(r"DESIGN\.md|shared/research|theory\.md item|theory item|\(item \d|(?<![\w/.-])(?:theory|design)\.md(?!#)")
CITED = re.compile(r"docs/(theory|design)\.md#([\w-]+)(?![\w{-])")
LINKED = re.compile(r"\]\((theory|design)\.md#([\w-]+)\)")


def _tracked():
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    files = [ROOT / f for f in out.splitlines()] + [p for p in DOCS.values()]
    return sorted({f for f in files if f.suffix in TEXT_SUFFIXES and f.is_file()})


def _anchors(doc):
    return set(re.findall(r'<a id="([\w-]+)"></a>', DOCS[doc].read_text(encoding="utf-8")))


def _section(doc, anchor):
    text = DOCS[doc].read_text(encoding="utf-8")
    start = text.index(f'<a id="{anchor}"></a>')
    nxt = text.find("<a id=", start + 1)
    return text[start:nxt if nxt > 0 else len(text)]


def test_no_reference_to_a_document_outside_the_repository():
    bad = []
    for f in _tracked():
        rel = f.relative_to(ROOT)
        # recorded outputs keep the words of the run that wrote them
        if f.name in PENDING | QUOTES_OLD_TEXT or f == Path(__file__).resolve() or rel.parts[0] == "paper_results":
            continue
        for n, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for m in FOREIGN.finditer(line):
                if rel.parts[0] == "docs" and m.group(0) in ("theory.md", "design.md"):
                    continue  # a relative link between the two documents
                bad.append(f"{rel}:{n}: {m.group(0)}")
    assert not bad, "\n".join(bad)


def test_every_cited_section_exists():
    anchors = {doc: _anchors(doc) for doc in DOCS}
    missing = []
    for f in _tracked():
        if f == Path(__file__).resolve():
            continue  # its own examples of broken references
        text = f.read_text(encoding="utf-8", errors="replace")
        refs = CITED.findall(text) + (LINKED.findall(text) if f.parent == DOCS["theory"].parent else [])
        missing += [f"{f.relative_to(ROOT)}: {doc}.md#{a}" for doc, a in refs if a not in anchors[doc]]
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("name", sorted(bounds.ALL))
def test_theory_md_has_the_section_of_every_bound(name):
    fn = bounds.ALL[name]
    anchor = fn.anchor  # t<item>, or t<item>-pl for the PL versions of T3 to T7
    section = _section("theory", anchor)
    assert f"`{name}`" in section, f"docs/theory.md#{anchor} does not name {name}"
    assert f"docs/theory.md#{anchor}" in fn.__doc__
    assert f"metric `{fn.metric}`" in section, f"docs/theory.md#{anchor}: metric of {name}"


def test_the_checks_catch_a_broken_reference(tmp_path, monkeypatch):
    """The patterns above flag the old citation forms and a section that does not exist."""
    for old in ("see DESIGN.md section 6", "(theory.md item 1)", "../shared/research/theory.md", "(item 3)",
                "theory item 8", "in theory.md, A"):
        assert FOREIGN.search(old), old
    for fine in ("docs/theory.md#t1", "docs/design.md#results", "../shared/data/mnist"):
        assert not FOREIGN.search(fine), fine
    assert "t99" not in _anchors("theory") and CITED.findall("docs/theory.md#t99") == [("theory", "t99")]
