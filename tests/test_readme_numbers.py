"""README result tables match their JSON files (benchmarks/check_readme.py; convention there)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_checker():
    spec = importlib.util.spec_from_file_location(
        "check_readme", ROOT / "benchmarks" / "check_readme.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["check_readme"] = mod  # dataclasses look their module up while it loads
    spec.loader.exec_module(mod)
    return mod


cr = _load_checker()

RESULT = {
    "runs": [
        {"loss": "l1", "seconds": 3.96, "test_top1": 0.8392, "rss_mib": 904.5},
        {"loss": "sparse", "seconds": 2.51, "test_top1": 0.7875, "peak_gib": 1.4512},
    ],
    "rows": 1281167,
    "flag": True,
}


def _write(tmp_path: Path, readme: str, results: dict | None = RESULT) -> Path:
    if results is not None:
        (tmp_path / "benchmarks" / "results").mkdir(parents=True)
        (tmp_path / "benchmarks/results/r.json").write_text(json.dumps(results))
    p = tmp_path / "README.md"
    p.write_text(readme)
    return p


GOOD = """# title

<!-- numbers: benchmarks/results/r.json -->

| head | s/run | test top-1 | top-1 % | rows | memory | note |
|---|---|---|---|---|---|---|
| l1 | 4.0 s | 0.839 | 83.9 | 1.28M | 905 MiB | `--topk 5` |
| sparse | **2.5 s** | 0.787 | 78.8% | 1,281,167 | 0.8–1.45 | – |
"""


@pytest.mark.parametrize(
    "doc", ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("docs/*.md"))]
)
def test_real_readme_tables_match_their_json(doc):
    report = cr.check_readme(ROOT / doc, root=ROOT)
    assert report.ok, f"{doc} numbers not found in their JSON:\n" + "\n".join(
        str(p) for p in report.problems
    )


def test_matching_table_passes(tmp_path):
    report = cr.check_readme(_write(tmp_path, GOOD))
    assert report.ok, [str(p) for p in report.problems]
    assert report.tables == 1
    # 4.0 s, 0.839, 83.9, 1.28M, 905 MiB; 2.5 s, 0.787, 78.8%, 1,281,167, the range
    assert report.cells == 10


def test_changed_number_fails_with_its_line(tmp_path):
    bad = GOOD.replace("| 0.787 |", "| 0.797 |").replace("4.0 s", "4.2 s")
    report = cr.check_readme(_write(tmp_path, bad))
    assert not report.ok
    lines = bad.splitlines()
    got = {(p.line, lines[p.line - 1].split("|")[1].strip()) for p in report.problems}
    assert got == {(7, "l1"), (8, "sparse")}
    msgs = " ".join(p.message for p in report.problems)
    assert "'0.797'" in msgs and "'4.2 s'" in msgs and "benchmarks/results/r.json" in msgs


def test_range_end_outside_the_json_fails(tmp_path):
    report = cr.check_readme(_write(tmp_path, GOOD.replace("0.8–1.45", "0.8–1.55")))
    assert [p.line for p in report.problems] == [8]
    assert "1.55" in report.problems[0].message


def test_missing_json_fails_clearly(tmp_path):
    report = cr.check_readme(_write(tmp_path, GOOD, results=None))
    assert not report.ok
    (p,) = report.problems
    assert p.line == 3
    assert "benchmarks/results/r.json" in p.message and "does not exist" in p.message


def test_invalid_json_fails_clearly(tmp_path):
    path = _write(tmp_path, GOOD)
    (tmp_path / "benchmarks/results/r.json").write_text("{not json")
    (p,) = cr.check_readme(path).problems
    assert "not valid JSON" in p.message


def test_marker_without_a_table_is_an_error(tmp_path):
    text = "<!-- numbers: benchmarks/results/r.json -->\n\nsome text\n\n\n| a | b |\n|---|---|\n"
    (p,) = cr.check_readme(_write(tmp_path, text + "| x | 12345 |\n")).problems
    assert p.line == 1 and "has no table" in p.message


def test_unmarked_and_fenced_tables_are_not_checked(tmp_path):
    text = (
        "| a | b |\n|---|---|\n| x | 99.9 |\n\n"
        "```\n<!-- numbers: benchmarks/results/r.json -->\n| a | b |\n|---|---|\n| x | 7.7 |\n```\n"
    )
    report = cr.check_readme(_write(tmp_path, text))
    assert report.ok and report.tables == 0 and report.cells == 0


def test_several_json_files_in_one_marker(tmp_path):
    path = _write(tmp_path, GOOD.replace("r.json -->", "r.json benchmarks/results/s.json -->"))
    (tmp_path / "benchmarks/results/s.json").write_text(json.dumps({"x": 12.25}))
    text = path.read_text().replace("| – |\n", "| 12.3 |\n")
    path.write_text(text)
    report = cr.check_readme(path)
    assert report.ok, [str(p) for p in report.problems]


@pytest.mark.parametrize(
    "cell, want",
    [
        ("0.826", [(0.826, 0.0005)]),
        ("4.0 s", [(4.0, 0.05)]),
        ("1.45 GiB", [(1.45, 0.005)]),
        ("82.5%", [(82.5, 0.05)]),
        ("1,416 s", [(1416.0, 0.5)]),
        ("2950 img/s", [(2950.0, 0.5)]),
        ("50k", [(50_000.0, 500.0)]),
        ("-0.5", [(-0.5, 0.05)]),
        ("0.9–1.45", [(0.9, 0.05), (1.45, 0.005)]),
        ("0.9 - 1.45 GiB", [(0.9, 0.05), (1.45, 0.005)]),
        ("**0.780**", [(0.78, 0.0005)]),
        ("`13`", [(13.0, 0.5)]),
    ],
)
def test_numeric_cells(cell, want):
    got = cr.parse_cell(cell)
    assert got is not None
    assert [(n.value, pytest.approx(n.tol)) for n in got] == [
        (pytest.approx(v), pytest.approx(t)) for v, t in want
    ]


@pytest.mark.parametrize(
    "cell",
    ["l1", "–", "-", "", "5/40", "ViT-L/14", "39.92 (mean)", "< 60 s", "≥ 2,500", "~0.84",
     "2026-11-23", "sparse `--topk 5`", "E=768", "pending: no GPU"],
)  # fmt: skip
def test_non_numeric_cells_are_ignored(cell):
    assert cr.parse_cell(cell) is None


def test_rounding_and_percent_scaling():
    leaves = cr.numeric_leaves({"a": [0.7875, {"b": 3.96}], "c": True, "d": "1.0"})
    assert sorted(leaves) == [0.7875, 3.96]  # booleans and strings are not numbers
    num = cr.parse_cell
    assert cr.found(num("0.787")[0], leaves) and cr.found(num("0.788")[0], leaves)  # either way
    assert cr.found(num("78.75%")[0], leaves) and cr.found(num("79")[0], leaves)
    assert cr.found(num("4.0 s")[0], leaves) and cr.found(num("4 s")[0], leaves)
    assert not cr.found(num("3.9 s")[0], leaves)
    assert not cr.found(num("0.786")[0], leaves)


def test_cli_exit_codes(tmp_path, capsys):
    assert cr.main([str(_write(tmp_path, GOOD))]) == 0
    assert capsys.readouterr().out.startswith("OK")
    (tmp_path / "README.md").write_text(GOOD.replace("0.839", "0.901"))
    assert cr.main([str(tmp_path / "README.md")]) == 1
    out = capsys.readouterr().out
    assert "README.md:7: " in out and "'0.901'" in out
