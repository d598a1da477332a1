"""docs/algorithms.md resolves every section and quirk id the code cites.

Docstrings, configs, examples and the README cite the algorithm description as
``§N.M`` (and ``Appendix A.N``) and name the reference's quirks by id
(``Q-T3``). These tests read the sources as text (no JAX) and check that each
cited section exists as a numbered heading of ``docs/algorithms.md`` and that
each quirk id is listed in its §13.
"""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "algorithms.md"
# Where citations live; only text sources are read (the package also ships binary assets).
CITING = [ROOT / "tracerl_jax", ROOT / "examples", ROOT / "configs", ROOT / "README.md", ROOT / "benchmarks",
          ROOT / "docs"]
TEXT_SUFFIXES = {".py", ".md"}

SECTION_REF = re.compile(r"§\s?([0-9]+(?:\.[0-9]+)*)")
APPENDIX_REF = re.compile(r"Appendix (A(?:\.[0-9]+)?)\b")
QUIRK_ID = re.compile(r"\bQ-[A-Z]+[0-9]+\b")
# "## 4. TraceRL rows ...", "### 4.2 Shrink", "## Appendix A. ...", "### A.1 Static shapes"
HEADING = re.compile(r"^#{2,4}\s+(?:Appendix\s+)?([0-9A-Z]+(?:\.[0-9]+)*)\.?(?:\s|$)")


def _sources() -> list[pathlib.Path]:
    files = []
    for path in CITING:
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix in TEXT_SUFFIXES)
    return [f for f in files if f != DOC]  # the document's own references: test_doc_sections_...


def _citations(pattern: re.Pattern) -> dict[str, list[str]]:
    """Cited id -> the files citing it (relative paths)."""
    found: dict[str, list[str]] = {}
    for path in _sources():
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in pattern.finditer(text):
            found.setdefault(m.group(1) if pattern.groups else m.group(0), []).append(
                str(path.relative_to(ROOT)))
    return found


def _doc_lines() -> list[str]:
    if not DOC.is_file():
        pytest.fail(f"{DOC.relative_to(ROOT)} is missing")
    return DOC.read_text(encoding="utf-8").splitlines()


def _heading_numbers() -> set[str]:
    numbers, in_code = set(), False
    for line in _doc_lines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        m = None if in_code else HEADING.match(line)
        if m:
            numbers.add(m.group(1))
    return numbers


def _section_text(number: str) -> str:
    """The text of top-level section ``## <number>.`` up to the next ``## `` heading."""
    lines, out, inside = _doc_lines(), [], False
    for line in lines:
        if line.startswith("## "):
            inside = bool(re.match(rf"## {re.escape(number)}\.(\s|$)", line))
            continue
        if inside:
            out.append(line)
    return "\n".join(out)


def test_sources_cite_sections_and_quirks():
    # Guards the scan itself: an empty result would make the other tests pass vacuously.
    assert len(_citations(SECTION_REF)) > 20
    assert len(_citations(QUIRK_ID)) > 10


def test_every_cited_section_is_a_heading():
    headings = _heading_numbers()
    missing = {ref: files for ref, files in _citations(SECTION_REF).items() if ref not in headings}
    assert not missing, "sections cited but not headings of docs/algorithms.md: " + ", ".join(
        f"§{ref} ({sorted(set(files))[0]})" for ref, files in sorted(missing.items()))


def test_every_cited_appendix_is_a_heading():
    headings = _heading_numbers()
    missing = sorted(ref for ref in _citations(APPENDIX_REF) if ref not in headings)
    assert not missing, f"appendix sections cited but missing in docs/algorithms.md: {missing}"


def test_doc_sections_cited_inside_the_doc_exist():
    headings = _heading_numbers()
    cited = set(SECTION_REF.findall("\n".join(_doc_lines())))
    assert not cited - headings, f"docs/algorithms.md cites its own missing sections: {sorted(cited - headings)}"


def test_every_cited_quirk_is_listed_in_section_13():
    quirks = _section_text("13")
    assert quirks.strip(), "docs/algorithms.md has no '## 13.' section"
    listed = set(QUIRK_ID.findall(quirks))
    missing = {q: files for q, files in _citations(QUIRK_ID).items() if q not in listed}
    assert not missing, "quirk ids cited but not listed in §13 of docs/algorithms.md: " + ", ".join(
        f"{q} ({sorted(set(files))[0]})" for q, files in sorted(missing.items()))


def test_quirk_entries_name_reference_library_and_switch():
    # Each §13 entry starts with the bold id and says what the reference does, what the
    # library does and which switch (or "—") reproduces the reference.
    entries = re.split(r"\n\* (?=\*\*Q-)", _section_text("13"))[1:]
    assert entries, "§13 has no '* **Q-..**' entries"
    for entry in entries:
        qid = QUIRK_ID.match(entry.lstrip("*")).group(0)
        for word in ("Reference:", "Library:", "Switch:"):
            assert word in entry, f"§13 entry {qid} does not say {word!r}"


def test_citations_point_into_the_repository():
    # The spec the code was first written against lives outside the repository; every citation
    # must point at docs/algorithms.md, which a clone has.
    outside = sorted(str(p.relative_to(ROOT)) for p in _sources()
                     if p.name != "algorithms.md" and "ALGORITHMS.md" in p.read_text(errors="ignore"))
    assert not outside, f"files citing the external ALGORITHMS.md: {outside}"
