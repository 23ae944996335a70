"""Caches at URLs: the zarr store and the object tree of a location, through fsspec.

A cache at `s3://…`, `gs://…`, `http(s)://…` or `hf://…` is the same Zarr v3 tree as a local
directory; zarr reads it through `zarr.storage.FsspecStore`, and the few things that look at
objects rather than arrays (progress markers, sizes, `cache push`) go through `Tree`, which
wraps the fsspec filesystem of a location (the local file system for a path). Credentials come
from each backend's own environment and config files (AWS_* and ~/.aws for s3fs, gcloud for
gcsfs, HF_TOKEN for huggingface_hub) or from `storage_options`; neither they nor the URL's
`user:pass@` / query string are ever written into a message (`core.location.redact`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from clipcbm.core.location import Location, redact, scheme_of

from .errors import CacheError, RemoteCacheError

# scheme -> the pyproject extra that installs its fsspec backend (the one-line error's advice)
EXTRAS = {
    "s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "http": "http", "https": "http",
    "hf": "hf", "az": "azure", "abfs": "azure",
}  # fmt: skip
READ_ONLY_SCHEMES = ("http", "https")


class MissingBackendError(CacheError):
    """The URL's scheme needs an fsspec backend that is not installed."""


def _missing_backend(location: Location, error: Exception) -> MissingBackendError:
    scheme = scheme_of(location)
    extra = EXTRAS.get(scheme)
    hint = (
        f"install it with `pip install 'clipcbm[{extra}]'`"
        if extra
        else "no fsspec backend is known for it; use s3://, gs://, http(s)://, hf:// or a path"
    )
    return MissingBackendError(
        f"cannot open {redact(location)}: the {scheme}:// backend is not installed ({hint})"
    )


# where the backends' own exception types live (botocore's EndpointConnectionError, aiohttp's
# ClientError, huggingface_hub's HfHubHTTPError are not all OSErrors)
NETWORK_MODULES = ("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "google", "httpx",
                   "huggingface_hub", "requests", "urllib3",
                   "fsspec.implementations.http")  # fmt: skip


def is_network_error(error: BaseException) -> bool:
    """Did reading fail on the way (network, permission, timeout) rather than in decoding?"""
    seen = error
    while seen is not None:
        module = type(seen).__module__ or ""
        if isinstance(seen, OSError | TimeoutError) or module.startswith(NETWORK_MODULES):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _describe(error: BaseException) -> str:
    """A library error as one short line, credentials removed."""
    text = " ".join(str(error).split())[:160] or type(error).__name__
    return redact(f"{type(error).__name__}: {text}")


@contextlib.contextmanager
def remote_errors(location: Location, what: str = ""):
    """Network/permission/missing-object errors of a backend become one RemoteCacheError
    naming the redacted URL (and `what`: the array or shard being read)."""
    try:
        yield
    except CacheError:
        raise
    except (ImportError, ModuleNotFoundError) as e:
        raise _missing_backend(location, e) from e
    except FileNotFoundError as e:
        where = f" ({what})" if what else ""
        raise RemoteCacheError(
            f"{redact(location)}{where} does not exist: {_describe(e)}. Check the bucket and "
            "key (and that `cache push` finished)."
        ) from None
    except PermissionError as e:
        raise RemoteCacheError(
            f"no permission to read {redact(location)}: {_describe(e)}. Check the credentials "
            "of the backend (environment / config file)."
        ) from None
    except Exception as e:  # the backend's own types: botocore, aiohttp, huggingface_hub, ...
        where = f" while reading {what}" if what else ""
        hint = ""
        if "credential" in type(e).__name__.lower():
            hint = (". Give the backend credentials the usual way (s3: AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials; gs: gcloud auth "
                    "application-default login; hf: HF_TOKEN)")  # fmt: skip
        raise RemoteCacheError(
            f"cannot reach {redact(location)}{where}: {_describe(e)}{hint}"
        ) from None


def filesystem(location: Location, storage_options: dict | None = None):
    """(fsspec filesystem, path inside it) for a URL; a missing backend is one clear line."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(str(location), **(storage_options or {}))
    except ImportError as e:
        raise _missing_backend(location, e) from None
    except ValueError as e:
        if "Protocol not known" in str(e):
            raise _missing_backend(location, e) from None
        raise RemoteCacheError(f"cannot open {redact(location)}: {_describe(e)}") from None


def open_store(location: str, storage_options: dict | None = None, read_only: bool = True):
    """The zarr FsspecStore of a URL (async backends directly, sync ones wrapped by zarr)."""
    from zarr.storage import FsspecStore

    with remote_errors(location):
        try:
            return FsspecStore.from_url(
                location, storage_options=storage_options or None, read_only=read_only
            )
        except ValueError as e:
            if "Protocol not known" in str(e):
                raise _missing_backend(location, e) from None
            raise


class Tree:
    """The objects under one location, by path relative to it ('zarr.json', 'train/ok/c/0').
    A local path uses the local file system, a URL its fsspec backend."""

    def __init__(self, location: Location, storage_options: dict | None = None):
        self.location = location
        self.fs, self.root = filesystem(location, storage_options)
        self.root = self.root.rstrip("/")
        self.local = isinstance(location, Path)

    def _full(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    @property
    def read_only(self) -> bool:
        return scheme_of(self.location) in READ_ONLY_SCHEMES

    def exists(self, rel: str = "") -> bool:
        with remote_errors(self.location, rel):
            return bool(self.fs.exists(self._full(rel)))

    def files(self, rel: str = "") -> dict[str, int]:
        """{path relative to the root: size in bytes} of every object under `rel` (empty if
        none)."""
        with remote_errors(self.location, rel):
            try:
                found = self.fs.find(self._full(rel), detail=True)
            except FileNotFoundError:
                return {}
        return {
            _relative(k, self.root): int(v.get("size") or 0)
            for k, v in found.items()
            if v.get("type") != "directory"
        }

    def read(self, rel: str) -> bytes:
        with remote_errors(self.location, rel):
            return self.fs.cat_file(self._full(rel))

    def write(self, rel: str, data: bytes) -> None:
        if self.read_only:
            raise RemoteCacheError(
                f"{redact(self.location)} is read-only ({scheme_of(self.location)}:// cannot be "
                "written); give an s3://, gs://, hf:// or local destination"
            )
        with remote_errors(self.location, rel):
            if self.local:
                self.fs.makedirs(self._full(rel).rsplit("/", 1)[0], exist_ok=True)
            self.fs.pipe_file(self._full(rel), data)

    def remove(self, rel: str) -> None:
        with remote_errors(self.location, rel), contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._full(rel), recursive=True)


def _relative(key: str, root: str) -> str:
    """`key` relative to `root` (fsspec may or may not keep a leading '/')."""
    k, r = key.lstrip("/"), root.lstrip("/")
    return k[len(r) :].lstrip("/") if k.startswith(r) else k
