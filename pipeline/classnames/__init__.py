"""Built-in class lists of the five named datasets, and their prompt-ready names.

Each `<dataset>.txt` beside this module keeps its source's own format (credits and checksums
in SOURCES.md):
- cifar10 / cifar100: one `label_names` / `fine_label_names` entry of the official meta file
  per line ("aquarium_fish");
- cub200: the official `classes.txt` ("1 001.Black_footed_Albatross");
- places365: the official `categories_places365.txt` ("/a/airfield 0"), byte for byte;
- imagenet: "wnid<TAB>OpenAI CLIP name<TAB>WordNet lemmas", in sorted-wnid order (the
  standard ILSVRC-2012 label order).

`official_labels` gives the labels as the official files spell them (for cross-checks and
ImageNet folder lookup); `builtin_classes` gives unique human-readable names for text prompts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

_DIR = Path(__file__).parent

# One parsed line: (official label, display name, alternative names used to disambiguate).
_Entry = tuple[str, str, list[str]]


def _parse_cifar(line: str) -> _Entry:
    return line, line.replace("_", " "), []


def _parse_cub(line: str) -> _Entry:
    folder = line.split(" ", 1)[1]  # "1 001.Black_footed_Albatross"
    return folder, folder.split(".", 1)[1].replace("_", " "), []


def _parse_places(line: str) -> _Entry:
    category = line.rsplit(" ", 1)[0]  # "/b/bakery/shop 31"
    return category, category[3:].replace("/", " ").replace("_", " "), []


def _parse_imagenet(line: str) -> _Entry:
    wnid, name, lemmas = line.split("\t")
    return wnid, name, lemmas.split(", ")


# dataset name -> parser of one line of its .txt file
_PARSERS: dict[str, Callable[[str], _Entry]] = {
    "cifar10": _parse_cifar,
    "cifar100": _parse_cifar,
    "cub200": _parse_cub,
    "places365": _parse_places,
    "imagenet": _parse_imagenet,
}
BUILTIN_LISTS: tuple[str, ...] = tuple(_PARSERS)


@cache
def _entries(name: str) -> tuple[_Entry, ...]:
    if name not in _PARSERS:
        raise ValueError(f"no built-in class list {name!r}; available: {', '.join(_PARSERS)}")
    text = (_DIR / f"{name}.txt").read_text(encoding="utf-8")
    return tuple(_PARSERS[name](line) for line in text.splitlines() if line.strip())


def official_labels(name: str) -> list[str]:
    """Labels as the official files spell them, in label order ("001.Black_footed_Albatross",
    "/a/airfield", "n01440764", "aquarium_fish")."""
    return [raw for raw, _, _ in _entries(name)]


@cache
def _classes(name: str) -> tuple[str, ...]:
    entries = _entries(name)
    return tuple(disambiguate([e[1] for e in entries], [e[2] for e in entries]))


def builtin_classes(name: str) -> list[str]:
    """Unique human-readable class names in label order, for text prompts."""
    return list(_classes(name))


def imagenet_wnids() -> list[str]:
    """The 1000 ILSVRC-2012 WordNet ids, sorted; the position is the standard label index."""
    return official_labels("imagenet")


def disambiguate(
    names: Sequence[str], alternatives: Sequence[Sequence[str]] | None = None
) -> list[str]:
    """Make class names unique (case-insensitively) without touching the unique ones.

    Each member of a group of equal names takes its first alternative (e.g. a WordNet
    synonym) that no other class uses, else the name itself if still free, else
    "name (k)". OpenAI's ImageNet names repeat "missile" and "sunglasses"; with WordNet
    lemmas as alternatives they become missile/projectile and sunglass/sunglasses.
    """
    alternatives = alternatives if alternatives is not None else [[] for _ in names]
    if len(alternatives) != len(names):
        raise ValueError(f"got {len(names)} names but {len(alternatives)} alternative lists")
    counts = Counter(n.casefold() for n in names)
    taken = {key for key, k in counts.items() if k == 1}
    out = []
    for name, alts in zip(names, alternatives, strict=True):
        if counts[name.casefold()] == 1:
            out.append(name)
            continue
        choice = next((a for a in [*alts, name] if a.casefold() not in taken), None)
        k = 2
        while choice is None or choice.casefold() in taken:
            choice, k = f"{name} ({k})", k + 1
        taken.add(choice.casefold())
        out.append(choice)
    return out
