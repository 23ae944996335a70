"""benchmarks/moved_numbers.py: the reading list of prose numbers a regenerated JSON moved."""

from __future__ import annotations

from tests._bench import load_benchmark

moved = load_benchmark("moved_numbers")

TEXT = """# Results

## Shots (`benchmarks/results/shots.json`)

The head reaches 70.4 % at k = 1, zero-shot 0.682, and 12 seeds agree.
Unchanged: 55.0 %.

| k | top-1 |
|---|---|
| 1 | 70.4 |

```
python x.py  # 70.4
```

## Other section (`benchmarks/results/sae.json`)

Here 70.4 is an SAE number, not a shots one.
"""


def test_leaves_are_the_numbers_by_path_without_provenance():
    doc = {"a": {"b": [1, 2.5], "ok": True}, "provenance": {"seconds": 3.0}, "c": "x"}
    assert moved.leaves(doc) == {"a.b.0": 1.0, "a.b.1": 2.5}


def test_a_prose_number_equal_to_a_moved_value_is_listed_with_its_new_value():
    cache = {
        "shots": {"m.k1": (0.7041, 0.7153), "m.zs": (0.6821, 0.6900), "m.n": (12.0, 13.0),
                  "m.same": (0.55, 0.55)},
        "sae": {},
    }  # fmt: skip
    cache["shots"] = {k: v for k, v in cache["shots"].items() if v[0] != v[1]}
    hits = moved.prose_hits(TEXT, "REV", cache)
    got = {(h["line"], h["shown"]): (h["path"], h["new_shown"]) for h in hits}
    # 70.4 (a percentage of 0.7041) and 0.682 (a fraction), both in the shots section
    assert got == {(5, "70.4"): ("m.k1", "71.5"), (5, "0.682"): ("m.zs", "0.690")}


def test_a_number_already_at_its_new_value_is_not_listed():
    cache = {"shots": {"m.k1": (0.7041, 0.7039)}, "sae": {}}  # 70.4 either way
    assert moved.prose_hits(TEXT, "REV", cache) == []


def test_tables_fences_other_sections_and_integers_are_not_read_as_prose():
    cache = {"shots": {"m.k1": (0.7041, 0.80), "m.n": (12.0, 13.0)}, "sae": {}}
    lines = {h["line"] for h in moved.prose_hits(TEXT, "REV", cache)}
    assert lines == {5}  # not the table (line 10), the fence (13) nor the SAE section (18)
