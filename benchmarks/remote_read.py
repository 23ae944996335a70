"""Issue 21: what reading a cache from S3 costs next to the local disk.

One split of a synthetic cache (default 200,000 x 768 fp16, 293 MiB of embeddings) is written
locally and copied with `cache push` to moto's S3 server on 127.0.0.1 (real HTTP, real s3fs,
no network: the figure is the client-side cost of the store — request handling, byte ranges,
decoding — not a WAN's bandwidth). Then `open_cache(...).split("train")` is timed from each
place, checked (per-shard checksums) and unchecked; the four reads are interleaved and repeated,
and the minimum of each is reported.

    python benchmarks/remote_read.py                 # -> benchmarks/results/remote_read.json
    python benchmarks/remote_read.py --quick         # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import ROOT, Run, add_common_args, parse_args  # noqa: E402

BUCKET = "bench"
CASES = (("local", False), ("s3", False), ("local", True), ("s3", True))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto():
    """moto's S3 server on loopback, and the environment s3fs reads its endpoint from."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")  # fmt: skip
    import fsspec

    fsspec.filesystem("s3").mkdir(BUCKET)
    return server


def _write(tmp: Path, rows: int, dim: int) -> Path:
    from clipcbm.cache import write_cache

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((rows, dim), dtype=np.float32)
    return write_cache(
        tmp / "remote_read.zarr",
        splits={"train": {"image_emb": emb, "labels": rng.integers(0, 10, rows)}},
        concepts=["c"],
        classes=[f"class {i}" for i in range(10)],
        concept_emb=rng.normal(size=(1, dim)),
        class_emb=rng.normal(size=(10, dim)),
    )


def _read(location, verify: bool) -> float:
    from clipcbm.cache import open_cache

    t0 = time.perf_counter()
    with open_cache(location, verify=verify, progress=False) as c:
        c.split("train")
    return time.perf_counter() - t0


def bench(rows: int, dim: int, repeats: int, tmp: Path) -> dict:
    from clipcbm.cache.transfer import copy_cache

    local = _write(tmp, rows, dim)
    server = _moto()
    try:
        url = f"s3://{BUCKET}/remote_read.zarr"
        t0 = time.perf_counter()
        copy_cache(local, url, progress=False)
        push_s = time.perf_counter() - t0
        times = {f"{w}_{'checked' if v else 'unchecked'}": [] for w, v in CASES}
        for _ in range(repeats):  # interleaved: drift in machine load hits every case alike
            for where, verify in CASES:
                key = f"{where}_{'checked' if verify else 'unchecked'}"
                times[key].append(_read(local if where == "local" else url, verify))
    finally:
        server.stop()
    best = {k: round(min(v), 4) for k, v in times.items()}
    return {
        "rows": rows,
        "dim": dim,
        "embedding_bytes": rows * dim * 2,
        "repeats": repeats,
        "seconds": best,
        "all_seconds": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "s3_over_local": {
            c: round(best[f"s3_{c}"] / best[f"local_{c}"], 2) for c in ("checked", "unchecked")
        },
        # what the per-shard checksum check costs (issue 22's target: local <= 1.15)
        "checked_over_unchecked": {
            w: round(best[f"{w}_checked"] / best[f"{w}_unchecked"], 3) for w in ("local", "s3")
        },
        "push_s": round(push_s, 3),
        "store": "moto ThreadedMotoServer on 127.0.0.1 (in-memory S3), s3fs, zarr FsspecStore",
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--repeats", type=int, default=3)
    add_common_args(p, ROOT / "benchmarks/results/remote_read.json",
                    quick={"rows": 2000, "dim": 64, "repeats": 1})  # fmt: skip
    args = parse_args(p, argv)
    run = Run(args.quick)
    with tempfile.TemporaryDirectory() as tmp:
        result = bench(args.rows, args.dim, args.repeats, Path(tmp))
    for k, v in result["seconds"].items():
        print(f"{k:<18} {v:.3f} s")
    print(f"s3 / local: {result['s3_over_local']}")
    print(f"checked / unchecked: {result['checked_over_unchecked']}")
    print(run.write(args.out, result))


if __name__ == "__main__":
    main()
