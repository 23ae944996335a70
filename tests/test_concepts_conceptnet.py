"""ConceptNet source: edge parsing from recorded API responses, the disk cache, retries with
backoff, and the local dump back-end giving the same concepts."""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.parse
from email.message import Message
from pathlib import Path

import pytest

from clipcbm.pipeline.concepts.conceptnet import (
    ConceptNetAPI,
    ConceptNetDump,
    ConceptNetError,
    Edge,
    class_terms,
    conceptnet_candidates,
    concepts_from_edges,
    uri_text,
)

FIXTURES = Path(__file__).parent / "fixtures" / "concepts" / "conceptnet"
DOG = [
    ("four legs", "HasA"),
    ("tail", "HasA"),
    ("animal", "IsA"),
    ("domestic animal", "IsA"),
    ("pet", "IsA"),
    ("loyal", "HasProperty"),
    ("flea", "AtLocation"),
    ("kennel", "AtLocation"),
]
CAT = [("tail", "HasA"), ("whiskers", "HasA"), ("feline", "IsA"), ("pet", "IsA"), ("paw", "PartOf")]


class RecordedGetter:
    """Serves tests/fixtures/concepts/conceptnet/<word>_<Rel>[_offset<k>].json by URL; a query
    without a recording gets an empty page, like the API for a relation a node lacks."""

    def __init__(self):
        self.urls: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        parsed = urllib.parse.urlsplit(url)
        assert (parsed.scheme, parsed.netloc, parsed.path) == (
            "https",
            "api.conceptnet.io",
            "/query",
        )
        q = dict(urllib.parse.parse_qsl(parsed.query))
        name = f"{q['node'].split('/')[-1]}_{q['rel'].split('/')[-1]}"
        if int(q.get("offset", 0)):
            name += f"_offset{q['offset']}"
        file = FIXTURES / f"{name}.json"
        if file.is_file():
            return file.read_bytes()
        return json.dumps({"@id": parsed.query, "edges": [], "view": {}}).encode()


def api(tmp_path, get, **kw) -> ConceptNetAPI:
    return ConceptNetAPI(tmp_path / "cache", get=get, sleep=lambda s: None, **kw)


def test_uri_helpers_and_terms():
    assert uri_text("/c/en/steering_wheel/n/wn/artifact") == "steering wheel"
    assert class_terms("aquarium fish") == ["/c/en/aquarium", "/c/en/fish"]
    assert class_terms("Cup of Tea", "phrase") == ["/c/en/cup_of_tea"]
    assert class_terms("pickup truck", "both") == [
        "/c/en/pickup_truck",
        "/c/en/pickup",
        "/c/en/truck",
    ]


def test_edge_direction_language_and_relation_rules():
    edges = [
        Edge("HasA", "/c/en/dog/n", "/c/en/tail"),  # outgoing: the end
        Edge("AtLocation", "/c/en/flea", "/c/en/dog"),  # incoming: the start
        Edge("IsA", "/c/en/poodle", "/c/en/dog/n"),  # incoming IsA: a kind of dog, skipped
        Edge("IsA", "/c/en/dog", "/c/fr/animal"),  # not English
        Edge("RelatedTo", "/c/en/dog", "/c/en/bark"),  # not one of the six relations
        Edge("HasA", "/c/en/hot_dog", "/c/en/bun"),
    ]  # another node
    assert concepts_from_edges("/c/en/dog", edges) == [("tail", "HasA"), ("flea", "AtLocation")]


def test_api_parses_recorded_pages_and_follows_next_page(tmp_path):
    get = RecordedGetter()
    out = conceptnet_candidates(["dog", "cat"], api(tmp_path, get))
    assert out == [(t, "dog", f"conceptnet:{r}") for t, r in DOG] + [
        (t, "cat", f"conceptnet:{r}") for t, r in CAT
    ]
    # 6 relations per word, plus the second IsA page for dog
    assert len(get.urls) == 13
    assert sum("offset=1000" in u for u in get.urls) == 1


def test_disk_cache_makes_the_second_run_offline(tmp_path):
    first = RecordedGetter()
    a = api(tmp_path, first)
    out1 = conceptnet_candidates(["dog"], a)
    assert a.n_requests == len(first.urls) == 7
    second = RecordedGetter()
    b = api(tmp_path, second)
    assert conceptnet_candidates(["dog"], b) == out1
    assert second.urls == [] and b.n_requests == 0
    c = api(tmp_path, RecordedGetter(), offline=True)
    assert conceptnet_candidates(["dog"], c) == out1
    with pytest.raises(ConceptNetError, match="not in the cache .* and --offline was given"):
        conceptnet_candidates(["cat"], c)


def http_error(code: int, retry_after: str | None = None) -> urllib.error.HTTPError:
    headers = Message()
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return urllib.error.HTTPError("https://api.conceptnet.io/x", code, "err", headers, None)


class FlakyGetter(RecordedGetter):
    def __init__(self, failures: list[Exception]):
        super().__init__()
        self.failures = list(failures)

    def __call__(self, url: str) -> bytes:
        if self.failures:
            self.urls.append(url)
            raise self.failures.pop(0)
        return super().__call__(url)


class FakeClock:
    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def sleep(self, s: float) -> None:
        self.sleeps.append(round(s, 6))
        self.now += s

    def __call__(self) -> float:
        return self.now


def test_retries_429_and_5xx_with_backoff_and_retry_after(tmp_path):
    clock = FakeClock()
    get = FlakyGetter([http_error(429, "7"), http_error(429), http_error(503)])
    client = ConceptNetAPI(
        tmp_path, get=get, sleep=clock.sleep, clock=clock, backoff_s=2.0, min_interval_s=1.0
    )
    edges = client.edges("/c/en/dog", "HasA")
    assert {e.end for e in edges} >= {"/c/en/tail", "/c/en/four_legs"}
    # Retry-After wins, then 2 s * 2**attempt
    assert clock.sleeps == [7.0, 4.0, 8.0]
    assert client.n_requests == 4
    client.edges("/c/en/dog", "PartOf")  # next request right away: paced to 1 s apart
    assert clock.sleeps == [7.0, 4.0, 8.0, 1.0]


def test_gives_up_after_max_retries_and_does_not_retry_404(tmp_path):
    clock = FakeClock()
    get = FlakyGetter([http_error(500)] * 5)
    client = ConceptNetAPI(tmp_path, get=get, sleep=clock.sleep, clock=clock, max_retries=2)
    with pytest.raises(ConceptNetError, match="failed 3 times .* use --conceptnet-dump"):
        client.edges("/c/en/dog", "HasA")
    assert client.n_requests == 3 and clock.sleeps == [2.0, 4.0]
    client = ConceptNetAPI(
        tmp_path, get=FlakyGetter([http_error(404)]), sleep=clock.sleep, clock=clock
    )
    with pytest.raises(ConceptNetError, match="HTTP 404"):
        client.edges("/c/en/dog", "HasA")
    assert client.n_requests == 1
    flaky_net = FlakyGetter([urllib.error.URLError("connection refused")])
    client = ConceptNetAPI(tmp_path, get=flaky_net, sleep=clock.sleep, clock=clock)
    assert client.edges("/c/en/dog", "HasA") and client.n_requests == 2


def write_dump(path: Path) -> Path:
    """A tiny assertions dump: the recorded API edges plus rows the index must drop."""
    rows = []
    for file in sorted(FIXTURES.glob("*.json")):
        for e in json.loads(file.read_text())["edges"]:
            info = json.dumps({"dataset": e["dataset"], "weight": e["weight"]})
            rows.append([e["@id"], e["rel"]["@id"], e["start"]["@id"], e["end"]["@id"], info])
    rows += [
        [
            "/a/[/r/RelatedTo/,/c/en/dog/,/c/en/bark/]",
            "/r/RelatedTo",
            "/c/en/dog",
            "/c/en/bark",
            '{"weight": 1.0}',
        ],
        [
            "/a/[/r/HasA/,/c/fr/chien/,/c/fr/queue/]",
            "/r/HasA",
            "/c/fr/chien",
            "/c/fr/queue",
            '{"weight": 1.0}',
        ],
        [
            "/a/[/r/ExternalURL/,/c/en/dog/,http://x/]",
            "/r/ExternalURL",
            "/c/en/dog",
            "http://dbpedia.org/resource/Dog",
            '{"weight": 1.0}',
        ],
    ]
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines("\t".join(r) + "\n" for r in rows)
    return path


def test_dump_backend_matches_the_api(tmp_path, monkeypatch):
    dump = write_dump(tmp_path / "conceptnet-assertions-5.7.0.csv.gz")
    backend = ConceptNetDump(dump, tmp_path / "cache")
    assert backend.index_path.name == f"{dump.name}.{dump.stat().st_size}.parquet"
    from_dump = conceptnet_candidates(["dog", "cat"], backend)
    from_api = conceptnet_candidates(["dog", "cat"], api(tmp_path, RecordedGetter()))
    assert from_dump == from_api
    import pandas as pd

    index = pd.read_parquet(backend.index_path)
    assert set(index["rel"]) <= {"HasA", "IsA", "PartOf", "HasProperty", "MadeOf", "AtLocation"}
    assert index["start"].str.startswith("/c/en/").all()
    assert index["end"].str.startswith("/c/en/").all()
    # the index is built once: a second backend on the same cache never re-reads the dump
    import clipcbm.pipeline.concepts.conceptnet as cn

    def no_reindex(*a, **k):
        raise AssertionError("re-indexed")

    monkeypatch.setattr(cn, "index_dump", no_reindex)
    assert conceptnet_candidates(["dog"], ConceptNetDump(dump, tmp_path / "cache")) == [
        c for c in from_api if c[1] == "dog"
    ]


def test_unreadable_dump_is_a_clear_error(tmp_path):
    bad = tmp_path / "conceptnet.csv.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(ConceptNetError, match="could not read the ConceptNet dump"):
        ConceptNetDump(bad, tmp_path / "cache")
    with pytest.raises(ConceptNetError, match="does not exist"):
        ConceptNetDump(tmp_path / "missing.csv.gz", tmp_path / "cache")
