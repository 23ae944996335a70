"""The notebook user's walk through the Python API, end to end on a planted cache.

Run it as a script (`python docs/notebook_example.py [WORKDIR]`) or paste the cells into a
notebook. Each `# %%` cell is one step; every function is a CLI command (`clipcbm fit-head`
is `clipcbm.fit_head`, options with `_` for `-`) and returns pandas tables.
tests/test_api.py runs this file, so it stays true.
"""

# %% set-up: a cache whose right answer is known (each class owns 3 of the 40 concepts)
import sys
import tempfile
from pathlib import Path

import clipcbm
from clipcbm.cache.planted import make_planted_cache, planted_concepts

work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="clipcbm-"))
spec = dict(n_train=800, n_test=400, n_classes=8, n_concepts=40, noise=2.5, seed=0)
path = make_planted_cache(work / "planted.zarr", **spec)

# %% open the cache (a path here; s3://, gs://, http(s):// and hf:// URLs open the same way)
cache = clipcbm.open_cache(path)
print(cache.classes[:3], len(cache.concepts), "concepts")

# %% fit a concept-bottleneck head (the CLI's defaults; here the l1 loss)
fit = clipcbm.fit_head(cache, loss="l1", out=work / "heads" / "l1", progress=False)
print(fit.table.to_string(index=False))

# %% evaluate it on the test split: a metrics dict and a per-class DataFrame
ev = clipcbm.evaluate(cache, fit, out=work / "eval" / "l1", progress=False)
print(f"test top-1 {ev.metrics['top1']:.3f}, NEC {ev.metrics['nec']:.1f}")
print(ev.per_class.head(3).to_string(index=False))

# %% explain one prediction: the concepts that contributed most to its logit
ex = clipcbm.explain(cache, 0, head=fit, out=work / "explain" / "row0.png")
label = cache.classes.index(ex.label)
top = ex.explanation.table.head(3)
print(f"row 0 is {ex.label}, predicted {ex.pred}; top concepts {list(top['concept'])}")
planted = {f"concept_{j:03d}" for j in planted_concepts(n_classes=8, n_concepts=40, seed=0)[label]}
print("of which planted for its class:", sorted(planted & set(top["concept"])))

# %% compare methods on the same split (a DataFrame, also written as CSV + PNG)
cmp = clipcbm.compare(cache, methods=["zero-shot", "probe", "l1", "sparse"],
                      out=work / "compare", progress=False)  # fmt: skip
print(cmp.table[["method", "top1", "acc_nec5", "faithfulness"]].to_string(index=False))

# %% the head as a module, for your own code
head = fit.load(cache)
print(type(head.module).__name__, "with", head.config["n_concepts"], "concepts")
cache.close()
