"""The documentation holds together: README.md (the front page) and the pages under docs/.

- Every relative Markdown link of README.md and docs/*.md names a file that exists and, with
  an ``#anchor``, a heading of that file (GitHub's anchors).
- Every ``docs/<page>.md`` or ``README.md`` (with or without ``#anchor``) named in the code,
  scripts and configuration names a page, and a heading, that exist.
- The README links every page of docs/, keeps the CONTRACT's two-command quick start, and
  its Configuration table lists every environment variable ``Settings.from_env`` reads, each
  with a default; its Large fleets table is the committed ``bench/results/fleet.json``.

No network: links to other sites are not followed.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
SETTINGS = ROOT / "streams" / "settings.py"

# `docs/storage.md#storage-layout`, `README.md`; only the page of `docs/alerts.md#alert-<name>`
# or `f"docs/alerts.md#alert-{name}"`
_DOC_REFERENCE = re.compile(r"(?<![\w/.-])(README\.md|docs/[\w-]+\.md)(?:#([\w-]+)(?![\w<{-]))?")
_NOT_SCANNED = {"docs", "__pycache__", "build", "dist", "test-output", "node_modules"}

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"(?<!!)\[(?P<text>[^\]\[]*)\]\((?P<target>[^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose(markdown: str) -> str:
    """The text outside fenced code blocks and inline code, where links are links."""
    return _INLINE_CODE.sub("", _FENCE.sub("", markdown))


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation but ``-`` and ``_`` dropped,
    each space a ``-`` (``Topic modes: `TOPIC_MODE``` -> ``topic-modes-topic_mode``)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading's anchor; a repeated one gets ``-1``, ``-2``, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for match in _HEADING.finditer(_FENCE.sub("", markdown)):
        anchor = github_anchor(match.group(1))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        out.add(anchor if count == 0 else f"{anchor}-{count}")
    return out


def links(markdown: str) -> list[str]:
    return [m.group("target") for m in _LINK.finditer(prose(markdown))]


def source_files() -> list[Path]:
    """The project's own text files but the Markdown pages (no hidden folders: .git, .venv,
    .stack)."""
    found = []
    for path in sorted(ROOT.rglob("*")):
        parts = path.relative_to(ROOT).parts
        if any(part.startswith(".") and part != ".ci" or part in _NOT_SCANNED
               or part.endswith(".egg-info") for part in parts[:-1]):
            continue
        if path == Path(__file__).resolve():  # its examples of broken references
            continue
        if path.is_file() and path.suffix != ".md" and path.stat().st_size < 1_000_000:
            found.append(path)
    return found


def broken_references(path: Path) -> list[str]:
    """The ``docs/<page>.md#anchor`` / ``README.md#anchor`` mentions of ``path`` whose page or
    heading does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return []
    broken = []
    for match in _DOC_REFERENCE.finditer(text):
        page, anchor = ROOT / match.group(1), match.group(2)
        if not page.is_file():
            broken.append(f"{match.group(0)}: no file {page}")
        elif anchor and anchor not in anchors(page.read_text(encoding="utf-8")):
            broken.append(f"{match.group(0)}: no heading #{anchor} in {match.group(1)}")
    return broken


def broken_links(path: Path) -> list[str]:
    """The relative links of ``path`` whose file or heading does not exist."""
    broken = []
    for target in links(path.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
            continue
        if anchor and (linked.suffix != ".md"
                       or anchor not in anchors(linked.read_text(encoding="utf-8"))):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    return broken


# --- the helpers ----------------------------------------------------------------------------

def test_github_anchor():
    assert github_anchor("Alert: WorkerDown") == "alert-workerdown"
    assert github_anchor("Topic modes: `TOPIC_MODE`") == "topic-modes-topic_mode"
    assert github_anchor("`POST /ingest` (the Device -> Backend API -> Kafka path)") == (
        "post-ingest-the-device---backend-api---kafka-path")
    assert anchors("# A\n## B\n## B\n```\n# not a heading\n```\n") == {"a", "b", "b-1"}


def test_broken_links_are_found(tmp_path):
    (tmp_path / "a.md").write_text("# A\n\n## Two words\n", encoding="utf-8")
    page = tmp_path / "b.md"
    page.write_text(
        "# B\n[ok](a.md) [ok](a.md#two-words) [ok](#b) [web](https://example.org/x#y)\n"
        "`[code](nowhere.md)`\n```\n[code](nowhere.md)\n```\n"
        "[gone](missing.md) [bad](a.md#three-words) [bad](#c)\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        f"missing.md: no file {tmp_path / 'missing.md'}",
        "a.md#three-words: no heading #three-words in a.md",
        "#c: no heading #c in b.md",
    ]


def test_broken_references_are_found(tmp_path):
    source = tmp_path / "x.py"
    source.write_text(
        "# README.md, docs/alerts.md, docs/alerts.md#alert-workerdown, docs/alerts.md#alert-<name>\n"
        "# docs/alerts.md#alert-nosuchalert and docs/nosuchpage.md; not mydocs/x.md\n",
        encoding="utf-8",
    )
    assert broken_references(source) == [
        "docs/alerts.md#alert-nosuchalert: no heading #alert-nosuchalert in docs/alerts.md",
        f"docs/nosuchpage.md: no file {ROOT / 'docs' / 'nosuchpage.md'}",
    ]


# --- the documentation ------------------------------------------------------------------------

@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert not broken_links(path)


def test_pages_named_in_the_code_exist():
    files = source_files()
    assert ROOT / "deploy" / "prometheus" / "alerts.yml" in files
    assert not [problem for path in files for problem in broken_references(path)]


def test_the_readme_links_every_page_of_docs():
    linked = {(README.parent / t.partition("#")[0]).resolve()
              for t in links(README.read_text(encoding="utf-8"))}
    pages = sorted(DOCS.glob("*.md"))
    assert pages, "docs/ has no pages"
    assert not [p.name for p in pages if p.resolve() not in linked]


def _readme_section(title: str) -> str:
    """The text of the README's ``## title`` section, up to the next ``##`` heading."""
    readme = README.read_text(encoding="utf-8")
    return readme.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_readme_quick_start_is_make_run_and_make_test():
    section = _readme_section("Quick start")
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make run", "make test"]


def _configuration_rows() -> dict[str, tuple[str, str]]:
    """The README's Configuration table: variable -> (default, description)."""
    section = _readme_section("Configuration")
    return {m.group(1): (m.group(2).strip(), m.group(3))
            for m in re.finditer(r"^\| `([A-Z][A-Z0-9_]+)` \|([^|]*)\|(.*)$", section,
                                 re.MULTILINE)}


def test_the_readme_documents_every_setting_with_its_default():
    """CONTRACT: every environment variable is documented in the README with its default."""
    names = set(re.findall(r'\benv,\s*"([A-Z][A-Z0-9_]+)"', SETTINGS.read_text(encoding="utf-8")))
    assert len(names) > 20, "no settings found in streams/settings.py"
    rows = _configuration_rows()
    assert not sorted(names - rows.keys()), "settings missing from the README's Configuration"
    assert not [name for name in names if not rows[name][0]], "settings without a default"


def test_the_readme_names_every_value_of_a_setting_with_choices():
    """A setting read with ``_choice`` (an enum: TOPIC_MODE, DB_SSLMODE, ...) lists each of
    its values in its README row, and its default is one of them."""
    import inspect
    from dataclasses import fields

    from streams.settings import Settings

    settings, rows, checked = Settings.from_env({}), _configuration_rows(), []
    for group in fields(settings):
        values = getattr(settings, group.name)
        source = inspect.getsource(type(values).from_env)
        for name, attribute in re.findall(r'_choice\(\s*env,\s*"([A-Z0-9_]+)",\s*cls\.(\w+)\)',
                                          source):
            default, description = rows[name]
            enum = type(getattr(values, attribute))
            missing = [m.value for m in enum if f"`{m.value}`" not in description]
            assert not missing, f"README: {name} does not name {missing}"
            assert default.strip("`") in {m.value for m in enum}, f"README: {name}'s default"
            checked.append(name)
    assert "TOPIC_MODE" in checked and len(checked) >= 5, checked


def test_the_readme_fleet_table_is_the_committed_run():
    """The README's Large fleets table shows ``bench/results/fleet.json``, run by run."""
    runs = json.loads((ROOT / "bench" / "results" / "fleet.json").read_text())["runs"]
    section = _readme_section("Large fleets")
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in section.splitlines() if re.match(r"^\| [\d,]+ \|", line)]
    expected = [[f"{r['devices']:,}", f"{r['points_per_s']:,}", f"{r['points_per_s_new']:,}",
                 f"{r['worker_rss_mb']:,.0f} MB", f"{r['latency_p99_s']:.2f} s"] for r in runs]
    assert rows == expected
