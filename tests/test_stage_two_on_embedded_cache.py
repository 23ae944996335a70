"""Every stage-two command, through the CLI, on a cache that `embed` wrote with the tiny CLIP
(issue 3 "done means": not only on synthetic caches)."""

import json

import pytest
from typer.testing import CliRunner

import tests._dataset_factories as fx
from clipcbm.cache import open_cache
from clipcbm.cli import app
from clipcbm.heads.io.artifact import load_head

runner = CliRunner()
CONCEPTS = ["red fur", "four legs", "wings", "wheels", "stripes", "a tail"]


def _ok(args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module", params=["zarr", "hdf5"])
def embedded(request, tiny_clip_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"stage2_{request.param}")
    root = fx.make_imagefolder(tmp / "data", classes=("cat", "dog", "bird"), per_class=8)
    concepts = tmp / "concepts.txt"
    concepts.write_text("\n".join(CONCEPTS) + "\n")
    out = tmp / ("cache.zarr" if request.param == "zarr" else "cache.h5")
    _ok(["embed", "--dataset", "imagefolder", "--root", root, "--out", out, "--concepts",
         concepts, "--model", tiny_clip_dir, "--device", "cpu", "--workers", "0",
         "--format", request.param, "--no-progress"])  # fmt: skip
    return tmp, out


@pytest.mark.parametrize(
    ("loss", "extra"),
    [("sparse", []), ("l1", ["--coupling", "sequential"]), ("contrastive", []),
     ("sparse", ["--topk", "2", "--hard"]), ("probe", []), ("zs-probe", [])],
)  # fmt: skip
def test_fit_evaluate_explain_on_an_embedded_cache(embedded, loss, extra):
    tmp, cache = embedded
    head = tmp / "heads" / f"{loss}{'-'.join(extra)}"
    out = _ok(["fit-head", "--cache", cache, "--loss", loss, "--out", head, "--epochs", "3",
               "--batch-size", "8", "--no-progress", *extra])  # fmt: skip
    assert "head top-1" in out and "test" in out
    with open_cache(cache) as c:
        h = load_head(head, c)  # refuses a cache of another fingerprint
        assert h.config["cache_fingerprint"] == c.fingerprint
        assert h.config["n_concepts"] == len(CONCEPTS) and h.config["n_classes"] == 3

    ev = tmp / "eval" / head.name
    out = _ok(["evaluate", "--cache", cache, "--head", head, "--out", ev, "--no-progress"])
    record = json.loads((ev / "metrics_test.json").read_text())
    m = record["metrics"]
    assert "top1" in out and record["cache_fingerprint"] == h.config["cache_fingerprint"]
    assert m["n"] == 24 and 0.0 <= m["top1"] <= m["top5"] <= 1.0  # 3 classes x 8 test images
    assert (ev / "confusion_test.png").is_file() and (ev / "predictions_test.csv").is_file()
    if "--topk" in extra:
        assert m["active_concepts"] <= 2 and m["act_sparsity"] >= 1 - 2 / len(CONCEPTS)

    if h.kind == "cbm":
        png = tmp / f"{head.name}.png"
        out = _ok(["explain", "--cache", cache, "--head", head, "--index", "1", "--out", png,
                   "--top-k", "3"])  # fmt: skip
        assert png.is_file() and png.with_suffix(".csv").is_file() and "contribution" in out


def test_cms_eval_on_an_embedded_cache(embedded):
    tmp, cache = embedded
    out_dir = tmp / "cms"
    out = _ok(["cms-eval", "--cache", cache, "--normalize", "sum", "--out", out_dir,
               "--no-progress"])  # fmt: skip
    assert "zero-shot" in out and "cms (none)" in out
    assert (out_dir / "metrics.json").is_file() and (out_dir / "predictions_test.csv").is_file()
    png = tmp / "cms-expl.png"
    out = _ok(["explain", "--cache", cache, "--index", "0", "--out", png])
    assert png.is_file() and "contribution" in out
