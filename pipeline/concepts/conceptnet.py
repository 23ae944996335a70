"""ConceptNet as a concept source (SPEC §4; thesis §4.3 uses the ConceptNet 5 API like [25]).

For every class word we collect English edges of six relations (HasA, IsA, PartOf, HasProperty,
MadeOf, AtLocation) and take the node at the *other* end of each edge: "dog HasA tail" and
"flea AtLocation dog" both give a concept for dog. Incoming IsA edges ("poodle IsA dog") are
skipped: they name kinds of the class, not properties of it. Nodes are read from their URIs
("/c/en/steering_wheel/n" -> "steering wheel"), so both back-ends give the same text:

- `ConceptNetAPI`: api.conceptnet.io `/query?node=/c/en/<word>&rel=/r/<Rel>`, one request per
  (word, relation) and page; every response is stored in a disk cache (a re-run is offline),
  requests are spaced (the public API allows ~1 request/s) and retried with exponential
  backoff on HTTP 429/5xx and network errors. The HTTP getter is injected (tests replay JSON).
- `ConceptNetDump`: the assertions dump (`conceptnet-assertions-5.7.0.csv.gz`, tab-separated
  uri, relation, start, end, json), indexed once into a Parquet file of English edges of the six
  relations (chunked pandas read), for users who cannot rely on the API.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clipcbm.core.progress import bar as progress_bar
from clipcbm.pipeline.errors import PipelineError

log = logging.getLogger(__name__)

RELATIONS = ("HasA", "IsA", "PartOf", "HasProperty", "MadeOf", "AtLocation")
API_ROOT = "https://api.conceptnet.io"
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
# words of multi-word class names that carry no concept of their own
STOPWORDS = frozenset({"a", "an", "and", "for", "in", "of", "on", "or", "the", "to", "with"})

Getter = Callable[[str], bytes]  # url -> body; raises urllib.error.HTTPError / URLError


class ConceptNetError(PipelineError, RuntimeError):
    """ConceptNet could not be reached, answered garbage, or the dump is unreadable."""


@dataclass(frozen=True)
class Edge:
    rel: str  # "IsA"
    start: str  # term URI without sense: "/c/en/dog"
    end: str


def term_uri(word: str) -> str:
    """'Steering wheel' -> '/c/en/steering_wheel' (ConceptNet's own URI spelling)."""
    return "/c/en/" + "_".join(word.strip().lower().split())


def base_term(uri: str) -> str:
    """'/c/en/dog/n/wn/animal' -> '/c/en/dog'."""
    return "/".join(uri.split("/")[:4])


def uri_text(uri: str) -> str:
    """'/c/en/steering_wheel/n' -> 'steering wheel'."""
    return base_term(uri).split("/")[3].replace("_", " ")


def is_english(uri: str) -> bool:
    return uri.startswith("/c/en/")


def class_terms(name: str, query: str = "words") -> list[str]:
    """Term URIs to look up for one class name. query: 'words' (each word but stopwords, as
    the published code), 'phrase' (the whole name as one term) or 'both'."""
    words = [w for w in name.replace(",", " ").lower().split() if w not in STOPWORDS]
    phrase = [term_uri(name.replace(",", " "))]
    chosen = {
        "words": [term_uri(w) for w in words],
        "phrase": phrase,
        "both": phrase + [term_uri(w) for w in words],
    }[query]
    return list(dict.fromkeys(chosen))


def concepts_from_edges(term: str, edges: list[Edge]) -> list[tuple[str, str]]:
    """(concept text, relation) at the other end of each edge touching `term`, unique, sorted
    by (relation order, text) so the result does not depend on the order the edges came in."""
    found = set()
    for e in edges:
        if e.rel not in RELATIONS or not (is_english(e.start) and is_english(e.end)):
            continue
        if base_term(e.start) == term:
            other = e.end
        elif base_term(e.end) == term and e.rel != "IsA":
            other = e.start
        else:
            continue
        if base_term(other) != term:
            found.add((uri_text(other), e.rel))
    return sorted(found, key=lambda t: (RELATIONS.index(t[1]), t[0]))


# ---------------------------------------------------------------------------------- the API


def urllib_get(url: str, timeout: float = 30.0) -> bytes:
    request = urllib.request.Request(
        url, headers={"User-Agent": "clipcbm-concepts", "Accept": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (https only)
        return response.read()


def _retry_after(error: Exception) -> float | None:
    headers = getattr(error, "headers", None)
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class ConceptNetAPI:
    """The public REST API with a disk cache (one JSON file per URL), pacing and retries."""

    def __init__(
        self,
        cache_dir: Path,
        get: Getter = urllib_get,
        offline: bool = False,
        limit: int = 1000,
        max_pages: int = 10,
        max_retries: int = 5,
        backoff_s: float = 2.0,
        min_interval_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.cache_dir = Path(cache_dir)
        self.get, self.offline, self.limit, self.max_pages = get, offline, limit, max_pages
        self.max_retries, self.backoff_s, self.min_interval_s = (
            max_retries,
            backoff_s,
            min_interval_s,
        )
        self.sleep, self.clock = sleep, clock
        self.n_requests = 0  # network requests made (retries included)
        self._last_request = -float("inf")

    def edges(self, term: str, rel: str) -> list[Edge]:
        query = urllib.parse.urlencode({"node": term, "rel": f"/r/{rel}", "limit": self.limit})
        path, edges = f"/query?{query}", []
        for _ in range(self.max_pages):
            page = self._cached(path)
            edges += [_parse_edge(e) for e in page.get("edges", [])]
            path = (page.get("view") or {}).get("nextPage")
            if not path:
                break
        return [e for e in edges if e is not None]

    def _cache_file(self, path: str) -> Path:
        return self.cache_dir / f"{hashlib.sha256(path.encode()).hexdigest()[:32]}.json"

    def _cached(self, path: str) -> dict:
        file = self._cache_file(path)
        if file.is_file():
            return json.loads(file.read_text(encoding="utf-8"))["response"]
        if self.offline:
            raise ConceptNetError(
                f"{path} is not in the cache {self.cache_dir} and --offline was given; run once "
                "with network access, or use --conceptnet-dump"
            )
        body = self._request(API_ROOT + path)
        try:
            response = json.loads(body)
        except json.JSONDecodeError as e:
            raise ConceptNetError(f"{API_ROOT + path} did not return JSON: {body[:200]!r}") from e
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"path": path, "response": response}), encoding="utf-8")
        os.replace(tmp, file)
        return response

    def _request(self, url: str) -> bytes:
        for attempt in range(self.max_retries + 1):
            wait = self._last_request + self.min_interval_s - self.clock()
            if wait > 0:
                self.sleep(wait)
            self._last_request = self.clock()
            self.n_requests += 1
            try:
                return self.get(url)
            except urllib.error.HTTPError as e:
                if e.code not in RETRY_STATUS:
                    raise ConceptNetError(f"{url} answered HTTP {e.code} {e.reason}") from e
                error: Exception = e
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if isinstance(getattr(e, "reason", None), socket.gaierror):
                    raise ConceptNetError(
                        f"cannot resolve the ConceptNet host of {url} ({e.reason}): no network? "
                        "Use --conceptnet-dump with a local assertions file, or --offline with "
                        "a filled cache"
                    ) from e  # a failed name lookup is not transient: retrying only waits
                error = e
            if attempt == self.max_retries:
                raise ConceptNetError(
                    f"{url} failed {attempt + 1} times (last: {error}); retry later or use "
                    "--conceptnet-dump with a local assertions file"
                ) from error
            delay = _retry_after(error) or self.backoff_s * 2**attempt
            log.warning("ConceptNet: %s; retrying in %.1f s", error, delay)
            self.sleep(delay)
        raise AssertionError("unreachable")


def _parse_edge(edge: dict) -> Edge | None:
    """One API edge -> Edge (None when a field is missing: the API omits some on odd nodes)."""
    try:
        return Edge(
            edge["rel"]["@id"].removeprefix("/r/"), edge["start"]["@id"], edge["end"]["@id"]
        )
    except (KeyError, TypeError):
        return None


# --------------------------------------------------------------------------------- the dump


_DUMP_COLUMNS = ["uri", "rel", "start", "end", "info"]


def index_dump(dump: Path, out: Path, chunksize: int = 500_000, progress: bool = False) -> Path:
    """Keep English edges of the six relations of a ConceptNet assertions dump (.csv or .csv.gz,
    tab-separated, no header) in a Parquet file with columns rel ('IsA'), start, end (term
    URIs without sense). Written to a temporary name, then renamed."""
    import pandas as pd  # only the dump back-end needs it

    keep_rels = {f"/r/{r}" for r in RELATIONS}
    parts = []
    try:
        reader = pd.read_csv(
            dump,
            sep="\t",
            header=None,
            names=_DUMP_COLUMNS,
            usecols=["rel", "start", "end"],
            dtype=str,
            quoting=csv.QUOTE_NONE,
            chunksize=chunksize,
            compression="infer",
        )
        chunks = progress_bar(reader, desc="index ConceptNet dump", unit="chunk", enabled=progress)
        for chunk in chunks:
            mask = (
                chunk["rel"].isin(keep_rels)
                & chunk["start"].str.startswith("/c/en/")
                & chunk["end"].str.startswith("/c/en/")
            )
            part = chunk.loc[mask].copy()
            part["rel"] = part["rel"].str.removeprefix("/r/")
            for col in ("start", "end"):
                part[col] = part[col].str.split("/").str[:4].str.join("/")
            parts.append(part)
    except (OSError, ValueError, EOFError, pd.errors.ParserError) as e:
        raise ConceptNetError(
            f"could not read the ConceptNet dump {dump}: {e}. Expected the tab-separated "
            "assertions file (conceptnet-assertions-5.7.0.csv.gz)"
        ) from e
    table = pd.concat(parts, ignore_index=True).drop_duplicates(ignore_index=True)
    tmp = out.with_name(f".{out.name}.tmp")
    table.to_parquet(tmp, index=False)
    os.replace(tmp, out)
    log.info("indexed %s: %d English edges of %s -> %s", dump, len(table), RELATIONS, out)
    return out


class ConceptNetDump:
    """Edges from a local assertions dump, indexed once into `<cache_dir>/<dump>.<size>.parquet`."""

    def __init__(self, dump: Path, cache_dir: Path, progress: bool = False):
        dump = Path(dump)
        if not dump.is_file():
            raise ConceptNetError(f"ConceptNet dump {dump} does not exist")
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        # the size in the name invalidates the index when a different dump is given the same name
        self.index_path = cache_dir / f"{dump.name}.{dump.stat().st_size}.parquet"
        if not self.index_path.is_file():
            index_dump(dump, self.index_path, progress=progress)
        import pandas as pd

        table = pd.read_parquet(self.index_path)
        self._by_term: dict[str, list[Edge]] = {}
        for rel, start, end in zip(table["rel"], table["start"], table["end"], strict=True):
            edge = Edge(rel, start, end)
            self._by_term.setdefault(start, []).append(edge)
            if end != start:
                self._by_term.setdefault(end, []).append(edge)

    def edges(self, term: str, rel: str) -> list[Edge]:
        return [e for e in self._by_term.get(term, []) if e.rel == rel]


def conceptnet_candidates(
    classes: list[str], backend, query: str = "words", progress: bool = False
) -> list[tuple[str, str, str]]:
    """(concept, class, 'conceptnet:<Rel>') for every class, term and relation; `backend` is a
    ConceptNetAPI or ConceptNetDump (anything with `edges(term, rel) -> list[Edge]`)."""
    out = []
    for cls in progress_bar(classes, desc="ConceptNet", unit="class", enabled=progress):
        for term in class_terms(cls, query):
            edges = [e for rel in RELATIONS for e in backend.edges(term, rel)]
            out += [
                (text, cls, f"conceptnet:{rel}") for text, rel in concepts_from_edges(term, edges)
            ]
    return out
