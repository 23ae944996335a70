"""README and docs result tables show their JSON values (benchmarks/check_readme.py; the
convention is its docstring): every numeric cell is compared with ONE JSON value, named by the
table's numbers marker."""

from __future__ import annotations

import bisect
import json
import re
from pathlib import Path

import pytest

from tests._bench import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("docs/*.md"))]


def _load_checker():
    return load_benchmark("check_readme")


cr = _load_checker()

RESULT = {
    "runs": [
        {"loss": "l1", "seconds": 3.96, "test_top1": 0.8392, "rss_mib": 904.5, "rows": 1281167},
        {"loss": "sparse", "seconds": 2.51, "test_top1": 0.7875, "rss_mib": 800.2,
         "rows": 1281167, "peak_gib": 1.4512},
    ],
    "keys": {"1000/l1": {"lr x0.1": {"0.01": 0.59}}, "a.b": 7.25, "none": None, "name": "x"},
    "flag": True,
}  # fmt: skip

GOOD = """# title

<!-- numbers: benchmarks/results/r.json
rows: l1 sparse
cols: - | runs[loss={row}].seconds | runs[loss={row}].test_top1 | runs[loss={row}].test_top1 *100
  | runs[loss={row}].rows | runs[loss={row}].rss_mib | -
row sparse: - | runs[loss=sparse].seconds | runs.1.test_top1 | runs[loss={row}].test_top1 *100
  | runs[1].rows | runs[loss=sparse].rss_mib *1e-3 & runs[loss=sparse].peak_gib | -
-->

| head | s/run | test top-1 | top-1 % | rows | memory | note |
|---|---|---|---|---|---|---|
| l1 | 4.0 s | 0.839 | 83.9 | 1.28M | 905 MiB | `--topk 5` |
| sparse | **2.5 s** | 0.787 | 78.8% | 1,281,167 | 0.8–1.45 | – |
"""
L1, SPARSE = 13, 14  # 1-based lines of GOOD's body rows


def _write(tmp_path: Path, readme: str, results: dict | None = RESULT) -> Path:
    if results is not None:
        (tmp_path / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
        (tmp_path / "benchmarks/results/r.json").write_text(json.dumps(results))
    p = tmp_path / "README.md"
    p.write_text(readme)
    return p


def _check(tmp_path: Path, readme: str, results: dict | None = RESULT):
    return cr.check_readme(_write(tmp_path, readme, results))


def _row(text: str, line: int) -> list[str]:
    return cr.split_row(text.splitlines()[line - 1])


def _set_row(text: str, line: int, cells: list[str]) -> str:
    lines = text.splitlines()
    lines[line - 1] = "| " + " | ".join(cells) + " |"
    return "\n".join(lines) + "\n"


# --- the real files ----------------------------------------------------------------------


@pytest.mark.parametrize("doc", DOCS)
def test_real_tables_match_their_json(doc):
    report = cr.check_readme(ROOT / doc, root=ROOT)
    assert report.ok, f"{doc} numbers differ from their JSON:\n" + "\n".join(
        str(p) for p in report.problems
    )
    assert report.tables > 0 and report.cells > 0


def _marked_table(doc: str, json_name: str) -> tuple[str, int, int]:
    """(text, first, end) of the first table of `doc` whose marker names `json_name`."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    lines = text.splitlines()
    markers, _ = cr._markers(lines)
    skip = {i for m in markers for i in range(m.first, m.last + 1)}
    tables = cr._tables(lines, skip)
    for m in markers:
        if any(f.endswith(json_name) for f in m.files):
            first, end = next(t for t in tables if 0 < t[0] - m.last <= cr.MARKER_REACH)
            return text, first, end
    raise AssertionError(f"no table of {doc} is marked with {json_name}")


def test_swapping_two_cells_of_a_real_table_fails():
    # CMS top-1 of `none` and `zscore` in README.md's cms_speed table (rows 1 and 3, column 4)
    text, first, _ = _marked_table("README.md", "cms_speed.json")
    a, b = first + 3, first + 5  # 1-based lines of the first and third body rows
    ra, rb = _row(text, a), _row(text, b)
    assert ra[3] != rb[3]
    ra[3], rb[3] = rb[3], ra[3]
    bad = _set_row(_set_row(text, a, ra), b, rb)
    report = cr.check_text(bad, ROOT)
    assert {p.line for p in report.problems} == {a, b}
    msgs = " ".join(p.message for p in report.problems)
    assert f"{ra[3]!r}" in msgs and f"{rb[3]!r}" in msgs and "cms_top1" in msgs


def test_swapping_two_cells_within_a_real_row_fails():
    # test top-1 and act. sparsity of the `sparse` row (the third) of README.md's planted table
    text, first, _ = _marked_table("README.md", "planted_heads.json")
    line = first + 5
    row = _row(text, line)
    assert row[0] == "sparse" and row[1] != row[2]
    row[1], row[2] = row[2], row[1]
    report = cr.check_text(_set_row(text, line, row), ROOT)
    assert [p.line for p in report.problems] == [line, line]
    msgs = " ".join(p.message for p in report.problems)
    assert "heads.sparse.test_top1" in msgs and "heads.sparse.act_sparsity" in msgs


def _leaves(obj) -> list[float]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _leaves(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _leaves(v)]
    ok = isinstance(obj, (int, float)) and not isinstance(obj, bool)
    return [float(obj)] if ok else []


def test_a_real_cell_accepts_one_value_not_any_leaf_of_its_json():
    # issue 18: with "any leaf of the JSON, or 100 x it", 433 of the 1,001 values 0.0-100.0
    # passed against debiased.json; keyed to its path, a cell accepts only its own value
    text, first, end = _marked_table("README.md", "debiased.json")
    lines = text.splitlines()
    markers, _ = cr._markers(lines)
    mk = next(m for m in markers if 0 < first - m.last <= cr.MARKER_REACH)
    rows, errs = cr._row_entries(mk, end - first - 2)
    assert not errs
    entries = rows[1][1]  # "NT-Xent, M = 1", text top-1 %
    spec = cr.parse_spec(cr._split(entries, "|")[1])
    doc = json.loads((ROOT / "benchmarks/results/debiased.json").read_text())
    x = cr.resolve(doc, spec.steps)
    shown = [cr.parse_cell(f"{v / 10:.1f}")[0] for v in range(1001)]
    assert 1 <= sum(cr.matches(n, x, spec.scale) for n in shown) <= 2
    values = sorted({y * s for y in _leaves(doc) for s in (1, 100)})

    def any_leaf(n) -> bool:  # the old rule
        i = bisect.bisect_left(values, n.value - n.tol * 1.000001)
        return i < len(values) and values[i] <= n.value + n.tol * 1.000001

    assert sum(map(any_leaf, shown)) > 300


# --- synthetic tables --------------------------------------------------------------------


def test_matching_table_passes(tmp_path):
    report = _check(tmp_path, GOOD)
    assert report.ok, [str(p) for p in report.problems]
    assert report.tables == 1
    # 4.0 s, 0.839, 83.9, 1.28M, 905 MiB; 2.5 s, 0.787, 78.8%, 1,281,167, the range
    assert report.cells == 10 and report.values == 11


def test_swapped_pair_of_cells_fails_naming_both(tmp_path):
    l1, sp = _row(GOOD, L1), _row(GOOD, SPARSE)
    l1[2], sp[2] = sp[2], l1[2]  # test top-1 of l1 and sparse
    report = _check(tmp_path, _set_row(_set_row(GOOD, L1, l1), SPARSE, sp))
    assert sorted(p.line for p in report.problems) == [L1, SPARSE]
    by_line = {p.line: p.message for p in report.problems}
    assert "'0.787'" in by_line[L1] and "runs[loss=l1].test_top1" in by_line[L1]
    assert "0.8392" in by_line[L1] and "benchmarks/results/r.json" in by_line[L1]
    assert "'0.839'" in by_line[SPARSE] and "runs.1.test_top1" in by_line[SPARSE]


def test_swapped_pair_within_a_row_fails(tmp_path):
    row = _row(GOOD, SPARSE)
    row[2], row[3] = row[3], row[2]  # "0.787" <-> "78.8%": a fraction and its percentage
    report = _check(tmp_path, _set_row(GOOD, SPARSE, row))
    assert [p.line for p in report.problems] == [SPARSE, SPARSE]
    msgs = " ".join(p.message for p in report.problems)
    assert "'78.8%' (row 'sparse', column 'test top-1')" in msgs
    assert "'0.787' (row 'sparse', column 'top-1 %')" in msgs


def test_changed_cell_fails_with_its_line(tmp_path):
    bad = GOOD.replace("| 0.787 |", "| 0.797 |").replace("4.0 s", "4.2 s")
    report = _check(tmp_path, bad)
    got = {(p.line, _row(bad, p.line)[0]) for p in report.problems}
    assert got == {(L1, "l1"), (SPARSE, "sparse")}
    msgs = " ".join(p.message for p in report.problems)
    assert "'0.797'" in msgs and "'4.2 s'" in msgs and "benchmarks/results/r.json" in msgs
    assert "shows as 0.787" in msgs  # what the JSON value looks like at the cell's decimals


def test_a_value_of_another_cell_no_longer_passes(tmp_path):
    # 0.839 is in the JSON (l1's top-1), but not at the path this cell is keyed to
    report = _check(tmp_path, GOOD.replace("| 0.787 |", "| 0.839 |"))
    assert [p.line for p in report.problems] == [SPARSE]


def test_range_end_outside_the_json_fails(tmp_path):
    report = _check(tmp_path, GOOD.replace("0.8–1.45", "0.8–1.55"))
    assert [p.line for p in report.problems] == [SPARSE]
    assert "1.55" in report.problems[0].message and "peak_gib" in report.problems[0].message


@pytest.mark.parametrize(
    "path, why",
    [
        ("runs[loss=l2].seconds", "no element"),  # no run matches
        ("runs[rows=1281167].seconds", "2 elements"),  # several match
        ("runs[loss=l1].secs", "no 'secs'"),  # a renamed key
        ("runs.7.seconds", "no '7'"),  # index out of range
        ("results[loss=l1].seconds", "no 'results'"),
        ("runs[loss=l1].seconds.x", "applied to"),  # a number is not an object
        ("keys.name", "not a number"),  # a string
        ("keys.none", "not a number"),  # null
        ("flag", "not a number"),  # a boolean
        ("runs[loss=l1]", "not a number"),  # an object
    ],
)
def test_unresolvable_path_fails(tmp_path, path, why):
    bad = GOOD.replace("cols: - | runs[loss={row}].seconds", f"cols: - | {path}")
    report = _check(tmp_path, bad)
    assert [p.line for p in report.problems] == [L1], [str(p) for p in report.problems]
    msg = report.problems[0].message
    assert why in msg and "'4.0 s'" in msg and "r.json" in msg


def test_unmapped_numeric_cell_fails(tmp_path):
    bad = GOOD.replace("cols: - | runs[loss={row}].seconds", "cols: - | -")
    (p,) = _check(tmp_path, bad).problems
    assert p.line == L1 and "'4.0 s'" in p.message and "not mapped" in p.message


def test_mapped_cell_that_is_not_numeric_fails(tmp_path):
    bad = GOOD.replace("rss_mib | -\nrow", "rss_mib | runs[loss=l1].seconds\nrow")
    (p,) = _check(tmp_path, bad).problems
    assert p.line == L1 and "'`--topk 5`'" in p.message and "not a number" in p.message


def test_optional_path_allows_a_dash_only_where_the_json_has_no_value(tmp_path):
    text = (
        "<!-- numbers: benchmarks/results/r.json\nrows: l1 sparse\n"
        "cols: - | ?runs[loss={row}].peak_gib\n-->\n| head | peak |\n|---|---|\n"
    )
    assert _check(tmp_path, text + "| l1 | – |\n| sparse | 1.45 |\n").ok
    for rows, line in (
        ("| l1 | – |\n| sparse | – |\n", 8),  # the JSON has a value: the cell must show it
        ("| l1 | 1.4 |\n| sparse | 1.45 |\n", 7),  # the JSON has none: the cell must not
    ):
        (p,) = _check(tmp_path, text + rows).problems
        assert p.line == line
    typo = text.replace("loss={row}", "los={row}")  # a selector that matches nothing is an error
    assert not _check(tmp_path, typo + "| l1 | – |\n| sparse | 1.45 |\n").ok


def test_quoted_and_bare_keys_with_dots_slashes_and_blanks(tmp_path):
    text = (
        "<!-- numbers: benchmarks/results/r.json\n"
        "row a: - | keys.1000/l1.`lr x0.1`.`0.01` *100 | keys.`a.b`\n"
        "row b: - | `keys`.`1000/l1`.`lr x0.1`.`0.01` | keys.`a.b` *10\n"
        "-->\n| x | y | z |\n|---|---|---|\n| a | 59.0 | 7.25 |\n| b | 0.59 | 72 |\n"
    )
    report = _check(tmp_path, text)
    assert report.ok and report.cells == 4, [str(p) for p in report.problems]
    (p,) = _check(tmp_path, text.replace("keys.`a.b` *10", "keys.a.b *10")).problems
    assert p.line == 8 and "no 'a'" in p.message  # an unquoted dot separates keys


def test_selector_values_booleans_null_numbers_and_quoted(tmp_path):
    data = {"runs": [{"k": 16, "aux": True, "name": "a b", "x": 1.0},
                     {"k": 16, "aux": False, "name": "c", "opt": "fp32", "x": 2.0},
                     {"k": 32, "aux": False, "name": "d", "x": 3.0}]}  # fmt: skip
    text = (
        "<!-- numbers: benchmarks/results/r.json\n"
        "rows: runs[k=16,aux=true] runs[k=16, aux=false] runs[name=`a b`] runs[k=32,opt=null]\n"
        "cols: - | {row}.x\n-->\n| r | x |\n|---|---|\n"
        "| one | 1.0 |\n| two | 2.0 |\n| three | 1.0 |\n| four | 3.0 |\n"
    )
    report = _check(tmp_path, text, data)
    assert report.ok and report.cells == 4, [str(p) for p in report.problems]
    (p,) = _check(tmp_path, text.replace("runs[k=32,opt=null]", "runs[opt=null]"), data).problems
    assert p.line == 10 and "2 elements" in p.message


def test_wrong_counts_fail(tmp_path):
    # a third body row without a key
    report = _check(tmp_path, GOOD + "| more | 1.0 s | 0.1 | 1 | 1 | 1 MiB | – |\n")
    assert any("2 keys but the table below has 3 body rows" in p.message for p in report.problems)
    # a mapping with one entry too few
    bad = GOOD.replace("rss_mib | -\nrow", "rss_mib\nrow")
    (p,) = _check(tmp_path, bad).problems
    assert p.line == L1 and "7 cells" in p.message and "6 entries" in p.message
    # a range mapped to one path
    bad = GOOD.replace(" *1e-3 & runs[loss=sparse].peak_gib", " *1e-3")
    (p,) = _check(tmp_path, bad).problems
    assert p.line == SPARSE and "2 number(s)" in p.message


def test_marker_without_mapping_is_an_error(tmp_path):
    text = "<!-- numbers: benchmarks/results/r.json -->\n| a | b |\n|---|---|\n| x | 3.96 |\n"
    (p,) = _check(tmp_path, text).problems
    assert p.line == 1 and "no mapping" in p.message


@pytest.mark.parametrize(
    "line, why",
    [
        ("cols: - | runs[loss={row}.seconds", "unclosed `[`"),
        ("cols: - | runs[loss={row}].`seconds", "unclosed backquote"),
        ("cols: - | runs[loss=`{row}].seconds`", "unclosed `[`"),
        ("cols: - | runs[loss={row} size].seconds", "expected `,` or `]`"),
        ("cols: - | runs[loss={row}].seconds *x", "after `*`"),
        ("cols: - | runs..seconds", "expected a key"),
    ],
)
def test_bad_mapping_syntax_is_an_error(tmp_path, line, why):
    bad = GOOD.replace("cols: - | runs[loss={row}].seconds", line)
    report = _check(tmp_path, bad)
    assert any(why in p.message for p in report.problems), [str(p) for p in report.problems]


def test_unknown_mapping_line_and_stray_row_key_are_errors(tmp_path):
    bad = GOOD.replace("rows: l1 sparse\n", "rows: l1 sparse\nrowz: x\n")
    assert any("not a `rows:`" in p.message for p in _check(tmp_path, bad).problems)
    bad = GOOD.replace("row sparse:", "row dense:")
    msgs = [p.message for p in _check(tmp_path, bad).problems]
    assert any("`row dense:` names a key that is not in `rows:`" in m for m in msgs)


def test_row_lines_without_rows_map_the_body_in_order(tmp_path):
    text = (
        "<!-- numbers: benchmarks/results/r.json\nrow first: - | runs.0.seconds\n"
        "row second: - | runs.1.seconds\n-->\n| a | b |\n|---|---|\n| x | 4.0 |\n| y | 2.5 |\n"
    )
    assert _check(tmp_path, text).ok
    swapped = text.replace("| 4.0 |\n| y | 2.5 |", "| 2.5 |\n| y | 4.0 |")
    assert sorted(p.line for p in _check(tmp_path, swapped).problems) == [7, 8]


def test_missing_json_fails_clearly(tmp_path):
    report = _check(tmp_path, GOOD, results=None)
    (p,) = report.problems
    assert p.line == 3
    assert "benchmarks/results/r.json" in p.message and "does not exist" in p.message


def test_invalid_json_fails_clearly(tmp_path):
    path = _write(tmp_path, GOOD)
    (tmp_path / "benchmarks/results/r.json").write_text("{not json")
    (p,) = cr.check_readme(path).problems
    assert "not valid JSON" in p.message


def test_marker_without_a_table_is_an_error(tmp_path):
    text = "<!-- numbers: benchmarks/results/r.json\nrow x: - | flag\n-->\n\nsome text\n\n\n"
    (p,) = _check(tmp_path, text + "| a | b |\n|---|---|\n| x | 12345 |\n").problems
    assert p.line == 1 and "has no table" in p.message


def test_unclosed_marker_is_an_error(tmp_path):
    (p,) = _check(tmp_path, "<!-- numbers: benchmarks/results/r.json\nrows: a\n").problems
    assert "never closed" in p.message


def test_unmarked_and_fenced_tables_are_not_checked(tmp_path):
    text = (
        "| a | b |\n|---|---|\n| x | 99.9 |\n\n"
        "```\n<!-- numbers: benchmarks/results/r.json -->\n| a | b |\n|---|---|\n| x | 7.7 |\n```\n"
    )
    report = _check(tmp_path, text)
    assert report.ok and report.tables == 0 and report.cells == 0


def test_indented_marker_in_a_list_item(tmp_path):
    text = (
        "- item\n\n  <!-- numbers: benchmarks/results/r.json\n  rows: 0 1\n"
        "  cols: - | runs.{row}.seconds\n  -->\n  | a | b |\n  |---|---|\n"
        "  | x | 4.0 |\n  | y | 2.5 |\n"
    )
    report = _check(tmp_path, text)
    assert report.ok and report.cells == 2, [str(p) for p in report.problems]


def test_several_json_files_in_one_marker(tmp_path):
    _write(tmp_path, "")
    (tmp_path / "benchmarks/results/s.json").write_text(json.dumps({"x": 12.25}))
    text = (
        "<!-- numbers: benchmarks/results/r.json benchmarks/results/s.json\n"
        "row a: - | r.json:runs[loss=l1].seconds | benchmarks/results/s.json:x\n"
        "-->\n| a | b | c |\n|---|---|---|\n| a | 4.0 | 12.3 |\n"
    )
    assert _check(tmp_path, text).ok
    (p,) = _check(tmp_path, text.replace("r.json:runs", "runs")).problems
    assert "needs `NAME:`" in p.message
    (p,) = _check(tmp_path, text.replace("r.json:runs", "t.json:runs")).problems
    assert "not a file of the marker" in p.message


def test_the_docstring_example_passes(tmp_path):
    block = re.search(r"\n(    <!-- numbers:.*?)\n\n", cr.__doc__, re.S)[1]
    example = "\n".join(line[4:] for line in block.splitlines()) + "\n"
    example = example.replace("benchmarks/results/fit_head_speed.json", "benchmarks/results/r.json")
    data = {"results": [
        {"size": "cifar10", "loss": "l1", "test_top1": 0.8498, "seconds": 3.98},
        {"size": "cifar10", "loss": "sparse", "test_top1": 0.8234, "seconds": 7.6},
        {"size": "imagenet", "loss": "sparse", "seconds_per_epoch": 1416.1},
    ]}  # fmt: skip
    report = _check(tmp_path, example, data)
    assert report.ok and report.cells == 5, [str(p) for p in report.problems]


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
        ("35.9 (4.9)", [(35.9, 0.05), (4.9, 0.05)]),
        ("20 of 20", [(20.0, 0.5), (20.0, 0.5)]),
        ("10 classes", [(10.0, 0.5)]),
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
     "2026-11-23", "sparse `--topk 5`", "E=768", "pending: no GPU", "16 / yes / yes"],
)  # fmt: skip
def test_non_numeric_cells_are_ignored(cell):
    assert cr.parse_cell(cell) is None


def test_rounding_and_scaling():
    num = cr.parse_cell
    assert cr.matches(num("0.787")[0], 0.7875) and cr.matches(num("0.788")[0], 0.7875)
    assert cr.matches(num("78.75%")[0], 0.7875, 100) and cr.matches(num("79")[0], 0.7875, 100)
    assert not cr.matches(num("78.8")[0], 0.7875)  # a fraction is not a percentage unless *100
    assert cr.matches(num("4.0 s")[0], 3.96) and cr.matches(num("4 s")[0], 3.96)
    assert not cr.matches(num("3.9 s")[0], 3.96)
    assert not cr.matches(num("0.786")[0], 0.7875)
    assert cr.matches(num("1.28M")[0], 1281167) and not cr.matches(num("1.27M")[0], 1281167)


def test_cli_exit_codes(tmp_path, capsys):
    assert cr.main([str(_write(tmp_path, GOOD))]) == 0
    assert capsys.readouterr().out.startswith("OK")
    (tmp_path / "README.md").write_text(GOOD.replace("0.839", "0.901"))
    assert cr.main([str(tmp_path / "README.md")]) == 1
    out = capsys.readouterr().out
    assert f"README.md:{L1}: " in out and "'0.901'" in out


def test_fix_rewrites_only_the_wrong_numbers_and_keeps_their_style(tmp_path):
    """`check_readme.py --fix`: each cell number that differs from its JSON value is rewritten
    as the value shows at the cell's decimals (unit, bold, commas kept); the rest of the file is
    byte for byte the same, and the fixed file passes."""
    l1, sp = _row(GOOD, L1), _row(GOOD, SPARSE)
    l1[1], l1[3], sp[1], sp[4] = "9.9 s", "12.3", "**7.5 s**", "1,111,111"
    sp[5] = "0.1–1.45"  # a range: only its wrong end moves
    bad = _set_row(_set_row(GOOD, L1, l1), SPARSE, sp)
    report = _check(tmp_path, bad)
    assert not report.ok and len(report.fixes) == 5
    fixed = cr.apply_fixes(bad, report.fixes)
    assert _row(fixed, L1)[1] == "4.0 s" and _row(fixed, L1)[3] == "83.9"
    assert _row(fixed, SPARSE)[1] == "**2.5 s**" and _row(fixed, SPARSE)[4] == "1,281,167"
    assert _row(fixed, SPARSE)[5] == "0.8–1.45"
    assert fixed.splitlines()[: L1 - 1] == bad.splitlines()[: L1 - 1]
    assert _check(tmp_path, fixed).ok


def test_fix_from_the_command_line(tmp_path, capsys):
    cells = _row(GOOD, L1)
    cells[2] = "0.111"
    path = _write(tmp_path, _set_row(GOOD, L1, cells))
    assert cr.main([str(path), "--root", str(tmp_path)]) == 1
    assert cr.main([str(path), "--root", str(tmp_path), "--fix"]) == 0
    assert "fixed 1 number(s)" in capsys.readouterr().out
    assert _row(path.read_text(), L1)[2] == "0.839"
