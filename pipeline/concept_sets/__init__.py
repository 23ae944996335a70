"""Concept sets shipped with the package for the five named datasets (see SOURCES.md here)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILTIN_CONCEPT_SETS = ("cifar10", "cifar100", "cub200", "places365", "imagenet")


def builtin_concepts(dataset: str) -> Path:
    """Path of the built-in concept list of `dataset` (a KeyError-free, clear ValueError)."""
    if dataset not in BUILTIN_CONCEPT_SETS:
        raise ValueError(
            f"dataset {dataset!r} has no built-in concept set (those exist for "
            f"{', '.join(BUILTIN_CONCEPT_SETS)}); pass --concepts FILE (a .txt, one concept per "
            "line, or the CSV of `clipcbm concepts`)"
        )
    return HERE / f"{dataset}.txt"
