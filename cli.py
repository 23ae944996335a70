"""Command line: stage one (`embed`, `cache`), concept sets, stage two (heads, CMS, evaluation).

Thin by design: each command parses options, builds one frozen config and calls one `run`.
Heavy imports (torch, transformers) happen inside the commands so `--help` is instant.
"""

from __future__ import annotations

import json
import logging
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Interpretable image classification on frozen CLIP.",
)
cache_app = typer.Typer(no_args_is_help=True, help="Inspect and check embedding caches.")
app.add_typer(cache_app, name="cache")

Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str, code: int = 2) -> None:
    """Print a user-facing error (no traceback) and exit non-zero."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


# --- embed commands ---
class Fmt(str, Enum):
    zarr = "zarr"
    hdf5 = "hdf5"


class DType(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


@app.command()
def embed(
    dataset: Annotated[
        str,
        typer.Option(help="cifar10 | cifar100 | cub200 | places365 | imagenet | imagefolder | csv"),
    ],
    root: Annotated[
        Path, typer.Option(help="Dataset root (for csv: the manifest path,label file).")
    ],
    concepts: Annotated[
        Path,
        typer.Option(
            help="Concept list: .txt (one per line) or the CSV written by `cli.py concepts`."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Cache path: a directory (zarr) or a .h5 file (hdf5).")],
    model: Annotated[
        str, typer.Option(help="Hugging Face CLIP id or local directory.")
    ] = "openai/clip-vit-large-patch14",
    revision: Annotated[str | None, typer.Option(help="Hub branch, tag or commit.")] = None,
    split: Annotated[
        list[str] | None,
        typer.Option("--split", help="Split(s) to embed (repeatable). Default: train and test."),
    ] = None,
    format: Annotated[
        Fmt | None,
        typer.Option(  # noqa: A002
            help="Storage; default from --out's suffix (.h5 -> hdf5, else zarr)."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    dtype: Annotated[
        DType, typer.Option(help="Compute dtype; auto = fp16 on GPU, fp32 on CPU.")
    ] = DType.auto,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 256,
    workers: Annotated[int, typer.Option(help="Decode processes; -1 = all cores but one.")] = -1,
    compile: Annotated[bool, typer.Option(help="torch.compile the vision tower.")] = False,  # noqa: A002
    templates: Annotated[
        str,
        typer.Option(help="Class prompt templates: default | bare | imagenet80 | path to a file."),
    ] = "default",
    shard_rows: Annotated[int, typer.Option(help="Rows per shard (unit of work/resume).")] = 65536,
    chunk_rows: Annotated[int, typer.Option(help="Rows per chunk (unit a reader decodes).")] = 4096,
    jpeg_draft: Annotated[
        bool,
        typer.Option(
            help="Decode big JPEGs at reduced DCT scale (faster, "
            "not bit-exact with the reference processor)."
        ),
    ] = False,
    download: Annotated[
        bool, typer.Option(help="Download the dataset where supported (CIFAR).")
    ] = False,
    classes_file: Annotated[
        Path | None, typer.Option(help="Class names, one per line (csv).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing different cache at --out.")
    ] = False,
    progress: Progress = True,
    verbose: Verbose = False,
) -> None:
    """Stage one: run frozen CLIP once over a dataset into a resumable embedding cache."""
    setup_logging(verbose)
    from cache import CacheError
    from pipeline.datasets import DatasetError
    from pipeline.embed import EmbedConfig, run
    from pipeline.encoder import EncoderError

    try:
        cfg = EmbedConfig(
            dataset=dataset,
            root=root,
            out=out,
            concepts=concepts,
            model=model,
            revision=revision,
            splits=tuple(split or ("train", "test")),
            format=format.value if format else None,
            device=device,
            dtype=dtype.value,
            batch_size=batch_size,
            workers=workers,
            compile=compile,
            templates=templates,
            shard_rows=shard_rows,
            chunk_rows=chunk_rows,
            jpeg_draft=jpeg_draft,
            download=download,
            classes_file=classes_file,
            overwrite=overwrite,
            progress=progress,
        )
        result = run(cfg)
    except (ValueError, CacheError, DatasetError, EncoderError) as e:
        fail(str(e))
    if result.status == "complete":
        typer.echo(f"{result.path} is already complete for these inputs; nothing to do.")
        return
    bad = sum(result.unreadable.values())
    typer.echo(
        f"wrote {result.path}: {result.rows} rows, {bad} unreadable, "
        f"{result.seconds:.1f} s ({result.images_per_s:.1f} img/s)"
    )


# --- cache commands ---
@cache_app.command("info")
def cache_info_cmd(
    path: Annotated[Path, typer.Argument(help="Cache directory or .h5 file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a cache's metadata and sizes."""
    from cache import CacheError, cache_info

    try:
        info = cache_info(path)
    except CacheError as e:
        fail(str(e))
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    model = info.get("model", {})
    lines = [
        f"path        {info['path']} ({info['storage']}, {info['bytes_on_disk'] / 2**20:.1f} MiB)",
        f"complete    {info.get('complete')}",
        f"fingerprint {info.get('fingerprint')}",
        f"model       {model.get('id', '-')} (commit {model.get('commit') or '-'}), "
        f"E={info.get('embed_dim')}, logit scale {info.get('logit_scale')}",
        f"dataset     {info.get('dataset', {}).get('name', '-')}",
        f"concepts    {info['n_concepts']} (sha256 {str(info.get('concepts_sha256'))[:12]})",
        f"classes     {info['n_classes']}",
        f"created     {info.get('created')}",
    ]
    for s, d in info["split_rows"].items():
        lines.append(
            f"split {s:<6}{d['rows']} rows in {d['shards']} shards, "
            f"{d['unreadable']} unreadable, complete={d['complete']}"
        )
    typer.echo("\n".join(lines))


@cache_app.command("verify")
def cache_verify_cmd(path: Annotated[Path, typer.Argument(help="Cache directory or .h5 file.")]):
    """Check completeness, shapes, finiteness, unit norms and per-shard checksums."""
    from cache import CacheError, verify_cache

    try:
        problems = verify_cache(path)
    except CacheError as e:
        fail(str(e))
    if problems:
        for p in problems:
            typer.secho(f"FAIL {p}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
    typer.echo(f"OK {path}: complete, shapes, finite values, unit norms and checksums verified")


# --- concepts commands ---
# --- fit-head commands ---
# --- evaluation commands ---

if __name__ == "__main__":
    app()
