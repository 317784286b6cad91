"""The documentation (issue 33 item 1): the mkdocs-material site under docs/ builds in strict mode (no broken links,
no page outside the nav), the README stays a short front page whose links land on docs/ files, its results table
is the generated evidence block's numbers, and the evidence-writing tools point at files that hold their blocks."""
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EVIDENCE = ROOT / "docs" / "evidence.md"


def test_mkdocs_build_is_strict_clean(tmp_path):
    try:
        import material  # noqa: F401  (mkdocs-material)
        import mkdocs  # noqa: F401
    except ImportError as e:  # the test extra installs both; a silent skip would hide a broken docs build
        pytest.fail(f"{e}: install the test extra (pip install -e '.[test]'), which includes mkdocs-material")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                        "-d", str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "WARNING" not in r.stderr, r.stderr[-3000:]
    for page in ("index.html", "getting-started/index.html", "algorithms/index.html", "adding-a-method/index.html",
                 "evidence/index.html", "ui/index.html"):
        assert (tmp_path / "site" / page).is_file(), page


def test_readme_is_at_most_200_lines():
    n = len(README.read_text().splitlines())
    assert n <= 200, f"README.md has {n} lines; move detail into docs/ (the limit is 200)"


def _slug(heading: str) -> str:
    """Python-Markdown's toc slug (what mkdocs gives a heading as its anchor)."""
    s = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode()
    s = re.sub(r"[^\w\s-]", "", s).strip().lower()
    return re.sub(r"[-\s]+", "-", s)


def _anchors(md: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
    return {_slug(h.replace("`", "")) for h in re.findall(r"^#+\s+(.+?)\s*$", text, flags=re.M)}


def test_readme_links_resolve_to_docs_files():
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    local = [u for u in links if not re.match(r"[a-z]+://", u)]
    assert local, "the README links into docs/"
    for url in local:
        target, _, anchor = url.partition("#")
        path = ROOT / target
        assert target.startswith("docs/") and path.is_file(), f"README links to {url!r}: not a file under docs/"
        if anchor:
            assert anchor in _anchors(path), f"README links to {url!r}: {target} has no heading with that anchor"


def test_readme_first_screen_has_the_two_fresh_machine_commands():
    text = README.read_text()
    first = re.search(r"```bash\n(.*?)```", text, flags=re.S)
    assert first and text.index(first.group(0)) < 2000, "the first code block is the fresh-machine commands"
    commands = [line.split("#")[0].strip() for line in first.group(1).splitlines() if line.strip()]
    assert commands == ["bash scripts/sweep_demo.sh", "bash scripts/test.sh"]
    for c in commands:
        assert (ROOT / c.split()[1]).is_file(), c
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()  # CI runs the README's command


def _block(text: str, name: str) -> str:
    return text.split(f"<!-- {name}:start -->", 1)[1].split(f"<!-- {name}:end -->", 1)[0]


def test_readme_results_table_is_the_evidence_blocks_numbers():
    """The README's short table is copied from the generated evidence block: every number must be that block's."""
    block = _block(EVIDENCE.read_text(), "evidence")
    acc = {}  # label -> [sst2, mr, cr] from "Test accuracy (%)"
    delta = {}  # (label, task) -> "Δ [lo, hi]" from the paired table
    for row in re.findall(r"^\|(.+)\|\s*$", block, flags=re.M):
        cells = [c.strip() for c in row.split("|")]
        if len(cells) == 4 and cells[0] not in ("method", "---"):
            acc[cells[0]] = cells[1:]
        elif len(cells) == 11 and cells[1] in ("sst2", "mr", "cr"):
            delta[cells[0], cells[1]] = cells[3]
    readme_rows = {"zero-shot": "zero-shot", "MeZO": "mezo", "best ZO: FZOO": "fzoo-lr3e-3", "first-order AdamW": "fo"}
    table = README.read_text().split("## Results", 1)[1].split("\n## ", 1)[0]
    for prefix, label in readme_rows.items():
        row = next((r for r in table.splitlines() if r.startswith(f"| {prefix}")), None)
        assert row, f"the README's results table has no {prefix!r} row"
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        for cell, task, want in zip(cells, ("sst2", "mr", "cr"), acc[label]):
            assert cell.startswith(want), (label, task, cell, want)
            if label != "mezo":
                assert f"(Δ {delta[label, task]})" in cell, (label, task, cell, delta[label, task])


@pytest.mark.parametrize("script", ["benchmarks/compare_cpu.sh"])
def test_evidence_scripts_write_blocks_that_exist(script):
    from pipelines.compare.report import check_readme

    text = (ROOT / script).read_text()
    subprocess.run(["bash", "-n", str(ROOT / script)], check=True)
    targets = re.findall(r"--update-readme (\S+)(?: --readme-block (\S+))?", text)
    assert targets, f"{script} writes no generated block"
    for path, block in targets:
        check_readme(ROOT / path, block or "results")  # raises unless the file holds the block's markers
        assert path == "docs/evidence.md"
