"""Where a cache lives: a local path (a `Path`) or a URL that fsspec opens (kept as a `str`).

`Location` is the type of every `cache` field of a config. `as_location` is the one normaliser:
`s3://bucket/key`, `gs://…`, `http(s)://…`, `hf://…` stay strings (a `Path` would fold `//`
into `/`), `file://…` and plain paths become `Path`s. `redact` is the only form of a URL that
may reach a message, a log line or an artifact: no `user:pass@`, no query string (where
signed URLs and tokens live).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

Location = str | Path

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# what Path() makes of a URL: "s3://b/k" -> "s3:/b/k"; recognised for the schemes we open
_FOLDED = re.compile(r"^(s3|s3a|gs|gcs|http|https|hf|az|abfs):/(?!/)")
# credentials inside any text: "//user:pass@host" and "token=..."-style query values
_USERINFO = re.compile(r"(//)[^/@\s]*@")
_QUERY = re.compile(r"(\?)[^\s'\"]*")


def scheme_of(location: Location) -> str:
    """'s3', 'gs', 'https', … for a URL; 'file' for a local path."""
    if isinstance(location, Path):
        return "file"
    m = _URL.match(location)
    return m.group(1).lower() if m else "file"


def is_remote(location: Location) -> bool:
    return scheme_of(location) != "file"


def as_location(value: str | Path) -> Location:
    """A URL as a str (scheme lower-cased), anything else as a Path; `file://` is local."""
    text = str(value)
    folded = _FOLDED.match(text)
    if folded and not _URL.match(text):  # a URL that went through Path(): put the // back
        text = f"{folded.group(1)}://{text[folded.end() :]}"
    m = _URL.match(text)
    if m is None:
        return Path(value)
    if m.group(1).lower() == "file":
        return Path(text[m.end() :] or "/")
    return m.group(1).lower() + text[len(m.group(1)) :]


def redact(text: str | Path) -> str:
    """`text` (a URL, or a message holding URLs) without credentials: `user:pass@` and query
    strings are dropped, so signed URLs and tokens never reach a message or a file."""
    text = str(text)
    if _URL.match(text) and " " not in text:
        parts = urlsplit(text)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return _QUERY.sub("", _USERINFO.sub(r"\1", text))


def location_name(location: Location) -> str:
    """The last component of a location ('cache.zarr' for s3://b/runs/cache.zarr/)."""
    location = as_location(location)
    if isinstance(location, Path):
        return location.name
    return PurePosixPath(urlsplit(redact(location)).path.rstrip("/") or "/").name


def location_stem(location: Location) -> str:
    """The last component without its suffix: what output names are derived from."""
    name = location_name(location)
    return PurePosixPath(name).stem if name else "cache"


def location_str(location: Location) -> str:
    """What an artifact records as the cache it was fitted on (credentials removed)."""
    location = as_location(location)
    return redact(location) if is_remote(location) else str(location)


def join(location: Location, *parts: str) -> Location:
    """`location / part / …` for a Path or a URL."""
    if isinstance(location, Path):
        return location.joinpath(*parts)
    return "/".join([location.rstrip("/"), *parts])
