"""How much of the zero-shot classifier can ANY head over a cache's concepts express?

Every concept bottleneck here is linear in psi = alpha * I D^T, so whatever it learns, its
logits depend on the image only through the projection of i onto span(D), the span of the
concept embeddings. The part of the class embeddings outside that span is out of reach: a head
that keeps its zero-shot start can reproduce only the *projected* zero-shot classifier
C P_D. Per cache (test split):

- `class_norm_outside`: mean over classes of ||c - P_D c|| / ||c||;
- `logit_variance_outside`: the share of the (row-centred) zero-shot logit variance carried by
  the out-of-span part;
- `projected_agreement`: fraction of test rows where the projected classifier predicts what
  zero-shot predicts; `projected_top1` / `zero_shot_top1`: their test top-1.

    python benchmarks/concept_span.py [--cache NAME=PATH ...] [--out PATH] [--quick]

Default caches: the description caches and the planted cache of benchmarks/description_proxy.py
(runs/proxy/) and the real-photo testbed cache (runs/testbed/), those that exist. Writes
benchmarks/results/concept_span.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _provenance import Run, add_common_args, parse_args  # noqa: E402

from clipcbm.cache import open_cache  # noqa: E402

DEFAULT_CACHES = {
    "cifar10-desc": ROOT / "runs/proxy/cifar10-desc.zarr",
    "cub-desc": ROOT / "runs/proxy/cub-desc.zarr",
    "planted": ROOT / "runs/proxy/planted.zarr",
    "testbed": ROOT / "runs/testbed/cifar10-photos.zarr",
}


def concept_span(path: Path) -> dict:
    """The numbers of the module docstring for the cache at `path`."""
    with open_cache(path) as c:
        d = np.asarray(c.concept_emb(), dtype=np.float64)
        cl = np.asarray(c.class_emb(), dtype=np.float64)
        test = c.split("test").valid()
    x, y = test.image_emb.astype(np.float64), test.labels
    q, _ = np.linalg.qr(d.T)  # orthonormal basis of span(D), (E, min(|D|, E))
    inside = (cl @ q) @ q.T
    outside = cl - inside
    z, z_in = x @ cl.T, x @ inside.T
    zc = z - z.mean(1, keepdims=True)
    zo = x @ outside.T
    zo -= zo.mean(1, keepdims=True)
    return {
        "concepts": int(len(d)),
        "embed_dim": int(d.shape[1]),
        "span_rank": int(np.linalg.matrix_rank(d)),
        "test_rows": int(len(y)),
        "class_norm_outside": float(
            np.mean(np.linalg.norm(outside, axis=1) / np.linalg.norm(cl, axis=1))
        ),  # fmt: skip
        "logit_variance_outside": float(np.sum(zo**2) / np.sum(zc**2)),
        "projected_agreement": float((z_in.argmax(1) == z.argmax(1)).mean()),
        "projected_top1": float((z_in.argmax(1) == y).mean()),
        "zero_shot_top1": float((z.argmax(1) == y).mean()),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", action="append", default=None, metavar="NAME=PATH")
    add_common_args(ap, ROOT / "benchmarks/results/concept_span.json")
    args = parse_args(ap, argv)
    run = Run(args.quick)
    tmp = None
    if args.quick:
        from clipcbm.cache.planted import make_planted_cache

        tmp = tempfile.TemporaryDirectory()
        caches = {"quick": make_planted_cache(Path(tmp.name) / "q.zarr", n_train=40, n_test=40)}
    elif args.cache:
        caches = {s.split("=", 1)[0]: Path(s.split("=", 1)[1]) for s in args.cache}
    else:
        caches = {k: v for k, v in DEFAULT_CACHES.items() if v.exists()}
    out = {}
    for name, path in caches.items():
        out[name] = {"cache": str(path), **concept_span(path)}
        r = out[name]
        print(f"{name}: |D| {r['concepts']} in E {r['embed_dim']}: class norm outside span(D) "
              f"{r['class_norm_outside']:.3f}, projected classifier agrees with zero-shot on "
              f"{r['projected_agreement']:.3f} of test rows (top-1 {r['projected_top1']:.3f} "
              f"vs {r['zero_shot_top1']:.3f})", flush=True)  # fmt: skip
    if tmp is not None:
        tmp.cleanup()
    run.write(args.out, {"benchmark": "concept_span", "caches": out})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
