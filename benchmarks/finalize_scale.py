"""Issue 22: finalising an ImageNet-sized cache streams (peak RSS of the finalize step).

A child process writes a synthetic cache of ImageNet's shape (default 1,281,167 train +
50,000 test rows x 768 fp16, 65,536-row shards, the test split sharing 1,000 rows with train)
shard by shard, as `embed` does, and exits without finalising. A second child finalises it:
checks every marker, records the checksums and counts the split overlaps (block by block,
`cache.layout.count_overlap_streamed`). Each child reports its own peak RSS
(`resource.getrusage(RUSAGE_SELF)` at its end); the embeddings alone are 1.9 GiB, so a
finalize that held a split whole would show it.

    python benchmarks/finalize_scale.py              # -> benchmarks/results/finalize_scale.json
    python benchmarks/finalize_scale.py --quick      # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import ROOT, Run, add_common_args, parse_args  # noqa: E402

CHILD = r"""
import json, sys, time
import numpy as np
from clipcbm.cache import CacheWriter, sha256_lines

spec = json.loads(sys.argv[1])
n_train, n_test, dim, shared = spec["train"], spec["test"], spec["dim"], spec["shared"]
classes = [f"c{i}" for i in range(spec["classes"])]
identity = {"source": "finalize_scale", "splits": {"train": n_train, "test": n_test},
            "concepts_sha256": sha256_lines(["a"]), "classes_sha256": sha256_lines(classes)}
meta = {"embed_dim": dim, "logit_scale": 100.0, **{k: identity[k] for k in
        ("concepts_sha256", "classes_sha256")}}
w = CacheWriter(spec["path"], identity=identity, metadata=meta, embed_dim=dim,
                split_sizes=identity["splits"], shard_rows=spec["shard_rows"])
t0 = time.perf_counter()
if spec["step"] == "write":
    w.prepare(overwrite=False)
    def rows(split, start, stop):  # seeded per (split, row block): the same rows on any run
        g = np.random.default_rng([0 if split == "train" else 1, start])
        x = g.standard_normal((stop - start, dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    for split in ("train", "test"):
        for shard in w.pending_shards(split):
            r = w.plans[split].rows(shard)
            emb = rows(split, r.start, r.stop)
            if split == "test" and r.start < shared:  # test rows 0..shared-1 = train rows
                k = min(shared, r.stop) - r.start
                emb[:k] = rows("train", r.start, r.start + k)
            n = r.stop - r.start
            w.write_shard(split, shard, image_emb=emb.astype(np.float16),
                          norms=np.ones(n, np.float32),
                          labels=np.arange(r.start, r.stop) % len(classes),
                          ids=[f"{split}/{i}" for i in range(r.start, r.stop)],
                          ok=np.ones(n, bool))
    g = np.random.default_rng(2)
    w.write_text(concept_emb=g.standard_normal((1, dim)),
                 class_emb=g.standard_normal((len(classes), dim)), concepts=["a"],
                 classes=classes, templates=["{}"])
else:
    w.prepare(overwrite=False)
    w.finalize()
import resource
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": round(time.perf_counter() - t0, 2), "peak_rss_mib": round(peak, 1)}))
"""


def _child(spec: dict, step: str) -> dict:
    """Run one step in a fresh interpreter: its seconds and its own peak RSS (getrusage of
    RUSAGE_SELF at its end, so nothing of this process or the other step counts)."""
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps({**spec, "step": step})],
                         cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"{step} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=1_281_167)
    p.add_argument("--test", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--shared", type=int, default=1_000)
    p.add_argument("--shard-rows", type=int, default=65_536)
    add_common_args(p, ROOT / "benchmarks/results/finalize_scale.json",
                    quick={"train": 20_000, "test": 2_000, "dim": 64, "shared": 100,
                           "shard_rows": 4096})  # fmt: skip
    args = parse_args(p, argv)
    run = Run(args.quick)
    with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks") as tmp:
        spec = {"path": str(Path(tmp) / "imagenet-shape.zarr"), "train": args.train,
                "test": args.test, "dim": args.dim, "shared": args.shared, "classes": 1000,
                "shard_rows": args.shard_rows}  # fmt: skip
        t0 = time.perf_counter()
        write = _child(spec, "write")
        finalize = _child(spec, "finalize")
        from clipcbm.cache import open_cache

        with open_cache(spec["path"]) as c:
            overlap = c.metadata["overlap"]["test|train"]
        embed_mib = (args.train + args.test) * args.dim * 2 / 2**20
        result = {
            "rows": {"train": args.train, "test": args.test}, "dim": args.dim,
            "shard_rows": args.shard_rows, "embeddings_mib": round(embed_mib, 1),
            "write": write, "finalize": finalize, "overlap_found": overlap,
            "overlap_planted": args.shared, "seconds": round(time.perf_counter() - t0, 1),
        }  # fmt: skip
    print(json.dumps(result, indent=1))
    print(run.write(args.out, result))


if __name__ == "__main__":
    main()
