"""Markdown tables of a `benchmarks/gpu_suite.sh` run, from its JSON files (for the README).

    python benchmarks/gpu_suite_summary.py                          # benchmarks/results/gpu
    python benchmarks/gpu_suite_summary.py build/gpu_suite/results-cpu-quick --write summary.md

Reads `embed.json`, `embed_compile.json` (figure a), `fit_head_imagenet.json` (b),
`cms_imagenet.json` (c) and `steps.jsonl` (status of each step) from the results folder; a
missing file is shown as "–" and its step's status says why. Each figure table is preceded by
the `<!-- numbers: ... -->` marker naming its JSON files, so pasted into README.md it is
checked by `benchmarks/check_readme.py` (every number shown is rounded from those files).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "benchmarks" / "results" / "gpu"
DASH = "–"
TARGETS = {"model": 2500, "e2e": 1500, "epoch_s": 10, "cms_s": 60}  # SPEC §7 / issue 3


def load(results: Path, name: str) -> dict | None:
    p = results / name
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def steps(results: Path) -> list[dict]:
    p = results / "steps.jsonl"
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            out.append({"step": "?", "status": "unparsable line", "detail": line[:80]})
    return out


def fmt(v, unit: str = "", digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return DASH
    s = f"{v:,.{digits}f}"
    return f"{s} {unit}".strip()


def rel(results: Path, name: str) -> str:
    p = (results / name).resolve()
    try:
        return p.relative_to(ROOT).as_posix()
    except ValueError:
        return p.as_posix()


def marker(results: Path, names: list[str], mapping: list[str]) -> str:
    """The numbers marker of a table: its JSON files and one `row KEY: ...` line per body row
    (benchmarks/check_readme.py: every number shown keyed to the JSON value it comes from)."""
    present = [rel(results, n) for n in names if (results / n).exists()]
    if not present:
        return ""
    return "\n".join([f"<!-- numbers: {' '.join(present)}", *mapping, "-->"])


def _key(x) -> str:
    """A selector value: bare when check_readme's grammar allows it, else backquoted."""
    s = str(x)
    return s if s and not any(c in s for c in " `[],=|&*:{}.") else f"`{s}`"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def embed_section(results: Path) -> list[str]:
    eager, comp = load(results, "embed.json"), load(results, "embed_compile.json")
    ref = eager or comp
    if ref is None:
        return ["(a) stage one: no embed.json / embed_compile.json (see the steps table)", ""]
    arch = {"vit-l-14": "ViT-L/14", "vit-b-16": "ViT-B/16"}.get(ref["arch"], ref["arch"])
    title = f"{arch} ({ref['dtype']}, {ref['device_name']})"
    rows, mapping = [], []
    keys = ("decode_preprocess_img_per_s", "model_forward_img_per_s", "end_to_end_img_per_s",
            "end_to_end_marginal_img_per_s", "model_warmup_seconds")  # fmt: skip
    for label, name, r in (
        ("eager", "embed.json", eager),
        ("`--compile`", "embed_compile.json", comp),
    ):
        key = "eager" if name == "embed.json" else "compile"
        if r is None:
            rows.append([label] + [DASH] * 5)
            mapping.append(f"row {key}: -" + " | -" * 5)
            continue
        mapping.append(f"row {key}: -" + "".join(f" | ?{name}:{k}" for k in keys))
        rows.append([
            label,
            fmt(r.get("decode_preprocess_img_per_s"), "img/s", 0),
            fmt(r.get("model_forward_img_per_s"), "img/s", 0),
            fmt(r.get("end_to_end_img_per_s"), "img/s", 0),
            fmt(r.get("end_to_end_marginal_img_per_s"), "img/s", 0),
            fmt(r.get("model_warmup_seconds"), "s", 1),
        ])  # fmt: skip
    head = [title, "decode + preprocess", "model only", "end to end (one run)",
            "end to end (steady state)", "model warm-up"]  # fmt: skip
    note = (
        f"Stage one, `benchmarks/embed_throughput.py`: batch {ref['batch']}, {ref['workers']} "
        f"decode workers, {ref['images']} JPEGs per run ({ref.get('distinct_jpegs', '?')} "
        "distinct, cycled); steady state = extra images / extra seconds between a run of "
        f"{ref.get('e2e_small_images') or DASH} and one of {ref['images']}; warm-up = the first "
        "two forwards (the compilation with `--compile`). Target on one H100: "
        f"≥ {TARGETS['model']:,} img/s model only, ≥ {TARGETS['e2e']:,} img/s end to end."
    )
    m = marker(results, ["embed.json", "embed_compile.json"], mapping)
    return [note, "", *([m] if m else []), *table(head, rows), ""]


def fit_section(results: Path) -> list[str]:
    r = load(results, "fit_head_imagenet.json")
    if r is None:
        return ["(b) fit-head: no fit_head_imagenet.json (see the steps table)", ""]
    size = r["sizes"]["imagenet"]
    rows, mapping = [], []
    for x in r["results"]:
        if x["size"] != "imagenet":
            continue
        sel = f"results[size=imagenet, loss={_key(x['loss'])}, device={_key(x['device'])}]"
        mapping.append(
            f"row {len(mapping)}: -"
            + "".join(
                f" | ?{sel}.{k}"
                for k in ("seconds_per_epoch", "seconds", "val_top1", "test_top1", "gpu_peak_mib")
            )
        )
        rows.append([
            f"{x['loss']} ({x['device']})",
            fmt(x.get("seconds_per_epoch"), "s", 1),
            fmt(x.get("seconds"), "s", 1),
            fmt(x.get("val_top1"), "", 3),
            fmt(x.get("test_top1"), "", 3),
            fmt(x.get("gpu_peak_mib"), "MiB", 0),
        ])  # fmt: skip
    head = ["loss", "s / epoch", "whole run", "val top-1", "test top-1", "GPU peak"]
    note = (
        f"`fit-head` at {size['n_train']:,} train rows × |D| = {size['d']:,} → "
        f"{size['c']:,} classes (`benchmarks/fit_head_speed.py --imagenet-mode "
        f"{r.get('imagenet_mode', 'extrapolate')}`, synthetic cache, generator "
        f"{r.get('generator', 'numpy')}): seconds per epoch = train steps and validation checks; "
        "whole run = cache load, fit, final evaluation. Target on one H100: "
        f"< {TARGETS['epoch_s']} s/epoch."
    )
    m = marker(results, ["fit_head_imagenet.json"], mapping)
    return [note, "", *([m] if m else []), *table(head, rows), ""]


def cms_section(results: Path) -> list[str]:
    r = load(results, "cms_imagenet.json")
    if r is None:
        return ["(c) cms-eval: no cms_imagenet.json (see the steps table)", ""]
    sh = r["shape"]
    rows, mapping = [], []
    for norm, x in r.get("by_normalize", {}).items():
        gpu = max((x.get(k) or 0 for k in ("core_gpu_peak_mib", "e2e_gpu_peak_mib")), default=0)
        rss = max((x.get(k) or 0 for k in ("core_peak_rss_mib", "e2e_peak_rss_mib")), default=0)
        # the one key each peak column shows (the larger of the two)
        k_gpu = max(("core_gpu_peak_mib", "e2e_gpu_peak_mib"), key=lambda k: x.get(k) or 0)
        k_rss = max(("core_peak_rss_mib", "e2e_peak_rss_mib"), key=lambda k: x.get(k) or 0)
        p = f"by_normalize.{_key(norm)}"
        mapping.append(
            f"row {len(mapping)}: -"
            + "".join(
                f" | ?{p}.{k}"
                for k in ("e2e_seconds", "core_seconds", "cms_top1", "zs_top1", k_rss, k_gpu)
            )
        )
        rows.append([
            norm,
            fmt(x.get("e2e_seconds"), "s", 2),
            fmt(x.get("core_seconds"), "s", 2),
            fmt(x.get("cms_top1"), "", 3),
            fmt(x.get("zs_top1"), "", 3),
            fmt(rss or None, "MiB", 0),
            fmt(gpu or None, "MiB", 0),
        ])  # fmt: skip
    head = ["normalize", "cms-eval (whole command)", "CMS + zero-shot only", "CMS top-1",
            "zero-shot top-1", "peak RSS", "GPU peak"]  # fmt: skip
    note = (
        f"`cms-eval` at {sh['n']:,} images × {sh['concepts']:,} concepts × {sh['classes']:,} "
        f"classes on {r.get('device', 'cpu')} (`benchmarks/cms_speed.py`, synthetic cache; "
        "top-1 on its synthetic labels). Target: < 60 s, < 4 GiB."
    )
    m = marker(results, ["cms_imagenet.json"], mapping)
    return [note, "", *([m] if m else []), *table(head, rows), ""]


def steps_section(results: Path) -> list[str]:
    st = steps(results)
    if not st:
        return ["No steps.jsonl: not a gpu_suite.sh results folder?", ""]
    rows = []
    for s in st:
        rc = DASH if s.get("rc") is None else str(s["rc"])
        detail = (s.get("detail") or "").replace("|", "/")[:120] or DASH
        rows.append([s.get("step", "?"), s.get("status", "?"), f"{s.get('seconds', 0)} s", rc,
                     detail])  # fmt: skip
    failed = [s["step"] for s in st if s.get("status") != "ok"]
    head = "all steps ok" if not failed else f"NOT OK: {', '.join(failed)}"
    return [f"Steps: {head}", "", *table(["step", "status", "time", "rc", "detail"], rows), ""]


def summary(results: Path) -> str:
    ref = load(results, "embed.json") or load(results, "embed_compile.json") or {}
    lines = [f"## GPU suite results ({rel(results, '.')})", ""]
    fit = load(results, "fit_head_imagenet.json") or {}
    tiny = ref.get("arch") == "tiny" or (
        fit.get("sizes", {}).get("imagenet", {}).get("n_train", 1_281_167) < 1_281_167
    )
    dev = ref.get("device") or next((x["device"] for x in fit.get("results", [])), "?")
    if tiny or not str(dev).startswith("cuda"):
        lines += [f"**Dry run** (device {dev}, tiny sizes: {tiny}): checks the suite, "
                  "not benchmark figures.", ""]  # fmt: skip
    for part in (embed_section, fit_section, cms_section, steps_section):
        lines += part(results)
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--write", type=Path, default=None, help="also write the markdown here")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a step is not ok")
    args = ap.parse_args(argv)
    if not args.results.is_dir():
        print(f"no results folder {args.results}", file=sys.stderr)
        return 2
    text = summary(args.results)
    print(text)
    if args.write:
        args.write.write_text(text + "\n")
    st = steps(args.results)
    return 1 if args.strict and any(s.get("status") != "ok" for s in st) else 0


if __name__ == "__main__":
    raise SystemExit(main())
