"""benchmarks/gpu_suite_summary.py: tables from the suite's JSONs, consistent with check_readme."""

from __future__ import annotations

import json
from pathlib import Path

from tests._bench import load_benchmark

summary_mod = load_benchmark("gpu_suite_summary")
check = load_benchmark("check_readme")

EMBED = {
    "arch": "vit-l-14", "dtype": "fp16", "device": "cuda", "device_name": "NVIDIA H100",
    "batch": 256, "workers": 15, "images": 4096, "distinct_jpegs": 400, "e2e_small_images": 1024,
    "decode_preprocess_img_per_s": 2100.4, "model_forward_img_per_s": 2950.3,
    "model_warmup_seconds": 1.93, "end_to_end_img_per_s": 1402.6,
    "end_to_end_marginal_img_per_s": 1777.7,
}  # fmt: skip
FIT = {
    "sizes": {"imagenet": {"n_train": 1281167, "d": 4751, "c": 1000}},
    "imagenet_mode": "full", "generator": "torch:cuda",
    "results": [
        {"size": "imagenet", "loss": "l1", "device": "cuda", "seconds_per_epoch": 8.123,
         "seconds": 31.27, "val_top1": 0.9123, "test_top1": 0.9051, "gpu_peak_mib": 5120.4},
    ],
}  # fmt: skip
CMS = {
    "shape": {"n": 50000, "concepts": 4751, "classes": 1000}, "device": "cuda",
    "by_normalize": {"none": {"core_seconds": 0.41, "e2e_seconds": 3.02, "cms_top1": 0.9896,
                              "zs_top1": 0.9966, "e2e_peak_rss_mib": 1400.2,
                              "e2e_gpu_peak_mib": 880.0}},
}  # fmt: skip
STEPS = [
    {"step": "embed", "status": "ok", "rc": 0, "seconds": 61, "json": "embed.json", "detail": ""},
    {"step": "embed_compile", "status": "timeout", "rc": 124, "seconds": 120, "json": None,
     "detail": "killed"},
]  # fmt: skip


def _results(tmp_path: Path) -> Path:
    d = tmp_path / "gpu"
    d.mkdir()
    (d / "embed.json").write_text(json.dumps(EMBED))
    (d / "fit_head_imagenet.json").write_text(json.dumps(FIT))
    (d / "cms_imagenet.json").write_text(json.dumps(CMS))
    (d / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in STEPS))
    return d


def test_summary_tables_pass_the_readme_check(tmp_path):
    text = summary_mod.summary(_results(tmp_path))
    assert "| eager | 2,100 img/s | 2,950 img/s | 1,403 img/s | 1,778 img/s | 1.9 s |" in text
    assert "| l1 (cuda) | 8.1 s | 31.3 s | 0.912 | 0.905 | 5,120 MiB |" in text
    assert "| none | 3.02 s | 0.41 s | 0.990 | 0.997 | 1,400 MiB | 880 MiB |" in text
    assert "NOT OK: embed_compile" in text and "Dry run" not in text
    report = check.check_text(text, tmp_path)
    assert report.ok, [str(p) for p in report.problems]
    assert report.tables == 3 and report.cells > 10


def test_missing_figure_and_exit_codes(tmp_path, capsys):
    d = _results(tmp_path)
    (d / "embed.json").unlink()
    text = summary_mod.summary(d)
    assert "no embed.json" in text
    assert summary_mod.main([str(d)]) == 0
    assert summary_mod.main([str(d), "--strict"]) == 1  # a step timed out
    capsys.readouterr()
