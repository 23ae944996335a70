"""benchmarks/run_all.sh regenerates what the README and docs read, with the README's command
lines: a JSON a table reads but run_all.sh never writes, or a README command line that
run_all.sh runs differently, would make "regenerate everything" a false promise."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_ALL = (ROOT / "benchmarks" / "run_all.sh").read_text()


def _all_scripts() -> set[str]:
    body = re.search(r"^ALL=\((.*?)\)", RUN_ALL, re.S | re.M).group(1)
    return set(body.split())


def _run_all_args() -> dict[str, list[str]]:
    body = re.search(r"declare -A ARGS=\((.*?)\n\)", RUN_ALL, re.S).group(1)
    return {k: shlex.split(v) for k, v in re.findall(r'\[(\w+)\]="([^"]*)"', body)}


def _read_jsons() -> set[str]:
    names = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        names |= set(re.findall(r"numbers: benchmarks/results/([\w.-]+)\.json", doc.read_text()))
    return names


def test_every_json_a_table_reads_is_written_by_run_all():
    written = _all_scripts()
    # the stage-one CPU row is written by a line of its own (an --out of its own)
    extra = set(re.findall(r"--out benchmarks/results/([\w.-]+)\.json", RUN_ALL))
    for name in _all_scripts():
        assert (ROOT / "benchmarks" / f"{name}.py").is_file(), name
    missing = _read_jsons() - written - extra
    assert _read_jsons() and not missing, f"tables read JSONs run_all.sh never writes: {missing}"


def test_readme_command_lines_are_the_ones_run_all_runs():
    readme = (ROOT / "README.md").read_text()
    args = _run_all_args()
    assert args, "run_all.sh has no ARGS entries (the parser is stale)"
    for name, words in args.items():
        blocks = [b.replace("\\\n", " ") for b in re.findall(r"```bash\n(.*?)```", readme, re.S)]
        lines = [shlex.split(line) for b in blocks for line in b.splitlines()
                 if line.strip().startswith(f"python benchmarks/{name}.py")]  # fmt: skip
        assert lines, f"the README shows no `python benchmarks/{name}.py` command"
        assert any(line[2:] == words for line in lines), (name, lines, words)
