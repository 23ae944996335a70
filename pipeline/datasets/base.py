"""The dataset object every reader returns, and the helpers the readers share.

An `ImageDataset` is an index (ids, labels, class names) plus a way to decode image i.
Building it reads only small metadata files (and, for CIFAR, the pixel arrays); images are
decoded in `load`, usually inside DataLoader workers, so the object is plain and picklable.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from clipcbm.pipeline.errors import PipelineError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
OFFICIAL_SPLITS = ("train", "test")


class DatasetError(PipelineError, ValueError):
    """A dataset root, file list or option that cannot be read as the requested dataset."""


class UnreadableImageError(PipelineError, OSError):
    """One image that cannot be decoded (missing, corrupt or truncated file)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ImageDataset:
    """Index of one split: `ids[i]`, `labels[i]` and `load(i)` describe image i.

    ids are the original index ("00042", CIFAR) or the path relative to the dataset root;
    `source_split` is the official split the images come from (ImageNet/Places365 "val").
    """

    ID_KIND = "index"

    def __init__(
        self,
        *,
        name: str,
        split: str,
        source_split: str,
        root: Path,
        classes: Sequence[str],
        ids: Sequence[str],
        labels: np.ndarray | Sequence[int],
    ):
        self.name, self.split, self.source_split = name, split, source_split
        self.root = Path(root)
        self.classes = list(classes)
        self.ids = list(ids)
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self._check()

    def _check(self) -> None:
        where = f"{self.name} split {self.split!r} at {self.root}"
        if len(self.ids) != len(self.labels):
            raise DatasetError(f"{where}: {len(self.ids)} ids but {len(self.labels)} labels")
        seen: dict[str, int] = {}
        for i, c in enumerate(self.classes):
            if c.casefold() in seen:
                raise DatasetError(
                    f"{where}: class names must be unique (they become text prompts); "
                    f"{c!r} (class {i}) repeats class {seen[c.casefold()]}"
                )
            seen[c.casefold()] = i
        bad = np.flatnonzero((self.labels < 0) | (self.labels >= len(self.classes)))
        if bad.size:
            i = int(bad[0])
            raise DatasetError(
                f"{where}: label {int(self.labels[i])} of {self.ids[i]!r} is outside "
                f"0..{len(self.classes) - 1} ({len(self.classes)} classes)"
            )

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, "
            f"source_split={self.source_split!r}, n={len(self)}, n_classes={len(self.classes)})"
        )

    def load(self, i: int, draft_short_side: int | None = None) -> Image.Image:
        """Image i as RGB; raises UnreadableImageError when it cannot be decoded.

        draft_short_side: a JPEG file may be decoded at a reduced DCT scale (1/2, 1/4, 1/8)
        as long as its short side stays >= 2x this many pixels (`embed --jpeg-draft`)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """sha256 over (name, source_split, classes, ids, labels); reads no image."""
        h = hashlib.sha256()
        h.update(json.dumps([self.name, self.source_split, self.classes]).encode("utf-8"))
        h.update(b"\0ids\0")
        h.update("\0".join(self.ids).encode("utf-8", "surrogateescape"))
        h.update(b"\0labels\0")
        h.update(self.labels.astype("<i8").tobytes())
        return h.hexdigest()

    def describe(self) -> dict:
        return {
            "name": self.name,
            "split": self.split,
            "source_split": self.source_split,
            "root": os.path.abspath(self.root),
            "n": len(self),
            "n_classes": len(self.classes),
            "fingerprint": self.fingerprint(),
            # "path": ids name files, so the same id in two splits is the same image (a leak
            # stage two refuses); "index": ids are positions inside their own split
            "id_kind": self.ID_KIND,
        }


class FileImageDataset(ImageDataset):
    """Images stored as files: image i is `image_root / ids[i]`."""

    ID_KIND = "path"

    def __init__(self, *, image_root: Path, **kwargs):
        super().__init__(**kwargs)
        self.image_root = Path(image_root)

    def path(self, i: int) -> Path:
        return self.image_root / self.ids[i]

    def load(self, i: int, draft_short_side: int | None = None) -> Image.Image:
        return open_rgb(self.path(i), draft_short_side)


class ArrayImageDataset(ImageDataset):
    """Images held in memory as one uint8 array (N, H, W, 3) (CIFAR)."""

    def __init__(self, *, images: np.ndarray, **kwargs):
        super().__init__(**kwargs)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise DatasetError(
                f"expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}"
            )
        if len(images) != len(self.ids):
            raise DatasetError(f"{len(images)} images but {len(self.ids)} ids")
        self.images = images

    def load(self, i: int, draft_short_side: int | None = None) -> Image.Image:
        return Image.fromarray(self.images[i])  # (H, W, 3) uint8 -> RGB; nothing to draft


def jpeg_draft(im: Image.Image, short_side: int) -> None:
    """Ask PIL to decode a JPEG at the smallest DCT scale that keeps the short side >= 2x
    `short_side` (so the later bicubic resize still low-passes). Must run before `load()`."""
    if im.format != "JPEG":
        return
    w, h = im.size
    scale = 2 * short_side / min(w, h)
    if scale < 1:
        im.draft("RGB", (max(1, round(w * scale)), max(1, round(h * scale))))


def open_rgb(path: Path, draft_short_side: int | None = None) -> Image.Image:
    """Decode a whole image file to RGB. Truncated files fail here, not later in a worker.
    With `draft_short_side`, JPEGs are decoded at a reduced scale (see `jpeg_draft`)."""
    try:
        with Image.open(path) as im:
            if draft_short_side:
                jpeg_draft(im, draft_short_side)
            im.load()  # force the full decode: PIL is lazy and would fail only on first use
            return to_rgb(im, str(path))
    except UnreadableImageError:
        raise
    except FileNotFoundError as e:
        raise UnreadableImageError(f"{path}: file not found") from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UnreadableImageError(f"{path}: {type(e).__name__}: {e}") from e


# Pillow modes whose convert("RGB") is the image's 8-bit RGB (alpha dropped, palette looked up).
# 48-bit RGB and 16-bit grey+alpha PNGs already open as RGB/RGBA/LA (Pillow keeps the high byte).
_RGB_MODES = frozenset(
    {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV"}
)
# 16-bit grey: convert("RGB") clips every value above 255 (a 16-bit photo turns white)
_UINT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# formats whose mode-I pixels are 16-bit grey samples: 0..65535 (Pillow scales a PGM's maxval)
_UINT16_AS_I = frozenset({"PNG", "PPM"})
_NO_RGB = {
    "I": "32-bit integer pixels",
    "F": "32-bit float pixels",
    "LAB": "CIELAB pixels",
}


def to_rgb(im: Image.Image, where: str = "image") -> Image.Image:
    """`im` as 8-bit RGB, converted exactly or refused (UnreadableImageError naming the mode).

    16-bit grey (I;16*, and mode I from a PNG or PGM) keeps the high byte (v >> 8), as Pillow
    does for 48-bit RGB PNGs, so the same picture decodes alike in both. Pixels with no agreed
    8-bit scale (32-bit integer or float, CIELAB) are refused, never clipped."""
    mode = im.mode
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # avoids PIL's palette-transparency warning
    if mode in _RGB_MODES:
        return im.convert("RGB")
    if mode in _UINT16_MODES or (mode == "I" and im.format in _UINT16_AS_I):
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 0xFFFF):
            raise UnreadableImageError(
                f"{where}: {im.format or 'image'} in Pillow mode {mode!r} holds values outside "
                "0..65535, not 16-bit grey; convert it to 8-bit RGB (e.g. PNG) and re-run"
            )
        return Image.fromarray((a.astype(np.uint16) >> 8).astype(np.uint8)).convert("RGB")
    what = _NO_RGB.get(mode, "pixels")
    raise UnreadableImageError(
        f"{where}: {im.format or 'image'} in Pillow mode {mode!r} ({what}) has no unambiguous "
        "8-bit RGB conversion; convert the file to 8-bit RGB (e.g. PNG or JPEG) and re-run"
    )


def found(path: Path, limit: int = 8) -> str:
    """What is actually at `path`, for error messages."""
    path = Path(path)
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_dir():
        return f"{path} is a file, not a folder"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    if not names:
        return f"{path} is empty"
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return f"found in {path}: {', '.join(names[:limit])}{more}"


def require_official_split(name: str, split: str, source: dict[str, str]) -> str:
    """The official split name behind our "train"/"test"."""
    if split not in source:
        raise DatasetError(
            f"{name} has splits {', '.join(repr(s) for s in source)} "
            f"(official {', '.join(source.values())}), got {split!r}"
        )
    return source[split]


def read_lines(path: Path, what: str) -> list[str]:
    """Non-empty lines of a small UTF-8 text file, with a DatasetError naming `what`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise DatasetError(f"missing {what}: expected {path}; {found(Path(path).parent)}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read {what} {path}: {e}") from e
    return [line.strip() for line in text.splitlines() if line.strip()]


def list_images(folder: Path) -> list[str]:
    """Sorted image file names in `folder` (extension, any case; hidden files skipped)."""
    with os.scandir(folder) as it:
        names = [
            e.name
            for e in it
            if not e.name.startswith(".")
            and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
            and e.is_file()
        ]
    return sorted(names)


def list_subdirs(folder: Path) -> list[str]:
    """Names of the visible sub-folders of `folder`, sorted."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def check_against_builtin(name: str, given: list[str], builtin: list[str], source: Path) -> None:
    """Refuse a dataset whose own class file disagrees with the built-in list."""
    if given == builtin:
        return
    if len(given) != len(builtin):
        raise DatasetError(
            f"{source} lists {len(given)} classes, the official {name} list has {len(builtin)}; "
            "is this the official release?"
        )
    i = next(k for k, (a, b) in enumerate(zip(given, builtin, strict=True)) if a != b)
    raise DatasetError(
        f"{source} class {i} is {given[i]!r}, the official {name} list has {builtin[i]!r}; "
        "is this the official release?"
    )
