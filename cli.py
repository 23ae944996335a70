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
Device = Annotated[
    str, typer.Option(help="auto | cpu | cuda | cuda:N (auto = cuda when one is visible).")
]


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
    device: Device = "auto",
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
class ConceptSource(str, Enum):
    conceptnet = "conceptnet"
    llm = "llm"
    file = "file"


class ConceptQuery(str, Enum):
    words = "words"
    phrase = "phrase"
    both = "both"


class Similarity(str, Enum):
    sentence = "sentence"
    blend = "blend"


@app.command()
def concepts(
    source: Annotated[ConceptSource, typer.Option(help="Where raw concepts come from.")],
    out: Annotated[
        Path,
        typer.Option(help="Kept concepts CSV; .txt, .dropped.csv and .meta.json go beside it."),
    ],
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Built-in class list: cifar10 | cifar100 | cub200 | places365 | imagenet."
        ),
    ] = None,
    classes: Annotated[
        Path | None, typer.Option("--classes", help="Or: class names, one per line.")
    ] = None,
    input_path: Annotated[
        Path | None,
        typer.Option(
            "--input", help="--source file: .txt (one per line) or .csv (concept[,class])."
        ),
    ] = None,
    llm: Annotated[
        str | None, typer.Option(help="--source llm: causal LM hub id or local directory.")
    ] = None,
    llm_max_new_tokens: Annotated[int, typer.Option(help="Tokens per LLM answer.")] = 256,
    llm_batch_size: Annotated[int, typer.Option(help="Prompts per generate() call.")] = 8,
    conceptnet_dump: Annotated[
        Path | None,
        typer.Option(help="Local conceptnet-assertions-5.7.0.csv.gz instead of the REST API."),
    ] = None,
    conceptnet_cache: Annotated[
        Path, typer.Option(help="Cache of API responses and of the dump index.")
    ] = Path("~/.cache/clipcbm/conceptnet"),
    conceptnet_query: Annotated[
        ConceptQuery,
        typer.Option(help="Terms per class: each word, the whole phrase, or both."),
    ] = ConceptQuery.words,
    offline: Annotated[
        bool, typer.Option(help="ConceptNet API: cached responses only, fail on a miss.")
    ] = False,
    similarity: Annotated[
        Similarity,
        typer.Option(help="sentence = --sim-model cosine; blend = (sentence + 3*CLIP text)/4."),
    ] = Similarity.sentence,
    sim_model: Annotated[
        str, typer.Option(help="sentence-transformers hub id or local directory.")
    ] = "sentence-transformers/all-mpnet-base-v2",
    clip_model: Annotated[
        str, typer.Option(help="CLIP for --similarity blend.")
    ] = "openai/clip-vit-large-patch14",
    max_length: Annotated[int, typer.Option(help="Rule 1: drop concepts longer (chars).")] = 30,
    class_sim: Annotated[
        float, typer.Option(help="Rule 2: drop when cosine to any class >= this.")
    ] = 0.85,
    concept_sim: Annotated[
        float, typer.Option(help="Rule 3: of pairs >= this keep the more general.")
    ] = 0.9,
    min_mean_sim: Annotated[
        float | None, typer.Option(help="Rule 4 (off by default): drop mean cosine < this.")
    ] = None,
    device: Device = "auto",
    batch_size: Annotated[int, typer.Option(help="Texts per similarity-model batch.")] = 64,
    overwrite: Annotated[bool, typer.Option(help="Replace existing output files.")] = False,
    progress: Progress = True,
    verbose: Verbose = False,
) -> None:
    """Generate, filter (SPEC §4) and record the concept set a cache is built on."""
    setup_logging(verbose)
    from pipeline.concepts import ConceptsConfig, ConceptsError, run
    from pipeline.concepts.conceptnet import ConceptNetError
    from pipeline.concepts.llm import LLMError
    from pipeline.concepts.similarity import SimilarityModelError
    from pipeline.encoder import EncoderError

    try:
        cfg = ConceptsConfig(
            source=source.value,
            out=out,
            dataset=dataset,
            classes_file=classes,
            input_path=input_path,
            llm=llm,
            llm_max_new_tokens=llm_max_new_tokens,
            llm_batch_size=llm_batch_size,
            conceptnet_dump=conceptnet_dump,
            conceptnet_cache=conceptnet_cache,
            conceptnet_query=conceptnet_query.value,
            offline=offline,
            similarity=similarity.value,
            sim_model=sim_model,
            clip_model=clip_model,
            max_length=max_length,
            class_sim=class_sim,
            concept_sim=concept_sim,
            min_mean_sim=min_mean_sim,
            device=device,
            batch_size=batch_size,
            overwrite=overwrite,
            progress=progress,
        )
        result = run(cfg)
    except (
        ValueError,
        FileExistsError,
        ConceptsError,
        ConceptNetError,
        LLMError,
        SimilarityModelError,
        EncoderError,
    ) as e:
        fail(str(e))
    dropped = ", ".join(f"{rule} {n}" for rule, n in result.counts.items())
    typer.echo(
        f"kept {result.n_kept} of {result.n_raw} candidates -> {result.paths['csv']} "
        f"(sha256 {result.sha256[:12]}); dropped: {dropped}"
    )


# --- fit-head commands ---
class HeadLoss(str, Enum):
    l1 = "l1"
    contrastive = "contrastive"
    sparse = "sparse"
    probe = "probe"
    zs_probe = "zs-probe"


class Coupling(str, Enum):
    sequential = "sequential"
    joint = "joint"


class GumbelVariant(str, Enum):
    paper = "paper"
    reference = "reference"


class HeadOptimizer(str, Enum):
    adam = "adam"
    adamw = "adamw"


class CblInit(str, Enum):
    identity = "identity"
    random = "random"


def _fit_head_table(result) -> str:
    m = result.metrics
    cbm = result.kind == "cbm"
    head = ["split", "rows", "head top-1", "head top-5", "zero-shot top-1"]
    head += ["act. sparsity", "active concepts"] if cbm else []
    rows = [
        "{:<6} {:>8} {:>10} {:>10} {:>15}".format(*head[:5])
        + (" {:>13} {:>15}".format(*head[5:]) if cbm else "")
    ]
    for split in ("val", "test"):
        if split in m:
            h, z = m[split], m["zero_shot"][split]
            line = (
                f"{split:<6} {h['n']:>8} {h['top1']:>10.4f} {h['top5']:>10.4f} {z['top1']:>15.4f}"
            )
            if cbm:
                line += f" {h['act_sparsity']:>13.4f} {h['active_concepts']:>15.2f}"
            rows.append(line)
    return "\n".join(rows)


@app.command("fit-head")
def fit_head(
    cache: Annotated[Path, typer.Option(help="Embedding cache (zarr directory or .h5 file).")],
    loss: Annotated[
        HeadLoss, typer.Option(help="CBL loss, or a baseline: probe | zs-probe.")
    ] = HeadLoss.sparse,
    out: Annotated[
        Path | None, typer.Option(help="Head directory (default: runs/heads/<cache>-<loss>).")
    ] = None,
    coupling: Annotated[
        Coupling, typer.Option(help="sequential: FC on stopgrad(a); joint: CE reaches W_CBL.")
    ] = Coupling.joint,
    lam: Annotated[
        float, typer.Option("--lambda", help="l1 strength: (lambda/|D|)*||W_CBL||_1.")
    ] = 1e-3,
    lr_cbl: Annotated[float, typer.Option(help="Learning rate of the W_CBL optimizer.")] = 1e-3,
    lr_fc: Annotated[float, typer.Option(help="Learning rate of the W_F optimizer.")] = 1e-3,
    optimizer: Annotated[HeadOptimizer, typer.Option(help="Both optimizers.")] = HeadOptimizer.adam,
    weight_decay: Annotated[float, typer.Option(help="Weight decay, both optimizers.")] = 0.0,
    epochs: Annotated[int, typer.Option(help="Maximum passes over the train rows.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 256,
    val_fraction: Annotated[
        float, typer.Option(help="Seeded hold-out of train for early stopping.")
    ] = 0.1,
    patience: Annotated[int, typer.Option(help="Epochs without val gain before stopping.")] = 5,
    seed: Annotated[int, typer.Option(help="Init, shuffling, val split and Gumbel noise.")] = 0,
    tau_max: Annotated[float, typer.Option(help="Gumbel temperature at the first step.")] = 1.0,
    tau_min: Annotated[float, typer.Option(help="Gumbel temperature at the last step.")] = 0.1,
    hard: Annotated[bool, typer.Option(help="Straight-through one-hot Gumbel samples.")] = False,
    variant: Annotated[
        GumbelVariant, typer.Option(help="paper (eq. 9-10) | reference (published code).")
    ] = GumbelVariant.paper,
    cbl_init: Annotated[
        CblInit, typer.Option(help="identity (a = psi at init) | random (nn.Linear default).")
    ] = CblInit.identity,
    topk: Annotated[
        int,
        typer.Option(
            help="Keep each image's k largest CBL activations, zero the rest (0 = off, SPEC §2). "
            "Opt-in exact sparsity: the SPEC losses do not make activations sparse."
        ),
    ] = 0,
    device: Device = "auto",
    train_split: Annotated[str, typer.Option(help="Cache split to train on.")] = "train",
    test_split: Annotated[str, typer.Option(help="Cache split to report on.")] = "test",
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out.")] = False,
    progress: Progress = True,
    verbose: Verbose = False,
) -> None:
    """Stage two: fit a concept-bottleneck head (or a baseline) on a cache; writes a head dir."""
    setup_logging(verbose)
    from cache import CacheError
    from heads.config import FitHeadConfig
    from heads.train import run

    try:
        cfg = FitHeadConfig(
            cache=cache, out=out, loss=loss.value, coupling=coupling.value, lam=lam,
            lr_cbl=lr_cbl, lr_fc=lr_fc, optimizer=optimizer.value, weight_decay=weight_decay,
            epochs=epochs, batch_size=batch_size, val_fraction=val_fraction, patience=patience,
            seed=seed, tau_max=tau_max, tau_min=tau_min, hard=hard, variant=variant.value,
            cbl_init=cbl_init.value, topk=topk, device=device, train_split=train_split,
            test_split=test_split, overwrite=overwrite, progress=progress,
        )  # fmt: skip
        result = run(cfg)
    except (ValueError, CacheError, FileExistsError, RuntimeError) as e:
        fail(str(e))
    typer.echo(
        f"wrote {result.out_dir} ({result.loss}, kind {result.kind}, {result.device}, "
        f"{result.seconds:.1f} s, {len(result.history) or '-'} epochs)"
    )
    if "note" in result.metrics:
        typer.echo(f"note: {result.metrics['note']}")
    typer.echo(_fit_head_table(result))


# --- evaluation commands ---
class CmsNormalize(str, Enum):
    none = "none"
    sum = "sum"
    column = "column"
    zscore = "zscore"


EvalCache = Annotated[Path, typer.Option(help="Embedding cache (zarr directory or .h5 file).")]
EvalChunk = Annotated[int, typer.Option(help="Image rows per matmul (bounds memory).")]
NormalizeOpt = Annotated[
    CmsNormalize,
    typer.Option(help="CMS column normalisation; sum = none (row scaling keeps every cosine)."),
]


@app.command("cms-eval")
def cms_eval(
    cache: EvalCache,
    normalize: NormalizeOpt = CmsNormalize.none,
    split: Annotated[
        list[str] | None, typer.Option(help="Split to evaluate; repeat for more (default: test).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default: runs/cms/<cache-stem>).")
    ] = None,
    chunk_size: EvalChunk = 4096,
    top_concepts: Annotated[int, typer.Option(help="Concepts per image in the CSV.")] = 5,
    device: Device = "auto",
    progress: Progress = True,
    verbose: Verbose = False,
) -> None:
    """Concept Matrix Search beside zero-shot CLIP on the same split(s); CSVs + metrics JSON."""
    setup_logging(verbose)
    from cache import CacheError
    from heads.evaluate import CmsEvalConfig, run_cms_eval

    try:
        cfg = CmsEvalConfig(
            cache=cache, normalize=normalize.value, splits=tuple(split or ("test",)), out=out,
            chunk_size=chunk_size, top_concepts=top_concepts, device=device,
            progress=progress,
        )  # fmt: skip
        result = run_cms_eval(cfg)
    except (ValueError, CacheError) as e:
        fail(str(e))
    typer.echo(result.summary())
    typer.echo(f"wrote {cfg.out_dir()}")


@app.command("evaluate")
def evaluate_cmd(
    cache: EvalCache,
    head: Annotated[Path, typer.Option(help="Head directory written by fit-head.")],
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default: runs/eval/<head-name>).")
    ] = None,
    chunk_size: EvalChunk = 8192,
    device: Device = "auto",
    progress: Progress = True,
    verbose: Verbose = False,
) -> None:
    """Metrics of a head (top-1/5, per class, confusion, NEC, sparsity); CSV/JSON/PNG."""
    setup_logging(verbose)
    from cache import CacheError
    from heads.evaluate import EvaluateConfig, run_evaluate

    try:
        cfg = EvaluateConfig(
            cache=cache, head=head, split=split, out=out, chunk_size=chunk_size,
            device=device, progress=progress,
        )  # fmt: skip
        result = run_evaluate(cfg)
    except (ValueError, CacheError) as e:
        fail(str(e))
    typer.echo(result.summary())
    typer.echo(f"wrote {cfg.out_dir()}")


@app.command("explain")
def explain_cmd(
    cache: EvalCache,
    index: Annotated[int, typer.Option(help="Row of the split (0-based).")],
    head: Annotated[
        Path | None, typer.Option(help="cbm head directory (default: explain CMS instead).")
    ] = None,
    split: Annotated[str, typer.Option(help="Split the row belongs to.")] = "test",
    out: Annotated[
        Path | None, typer.Option(help="Bar chart .png, CSV beside it (default: runs/explain/...).")
    ] = None,
    top_k: Annotated[int, typer.Option(help="Concepts shown.")] = 10,
    normalize: NormalizeOpt = CmsNormalize.none,
    device: Device = "auto",
    verbose: Verbose = False,
) -> None:
    """Top concepts of one prediction (cbm head, or CMS) as a table, CSV and bar chart PNG."""
    setup_logging(verbose)
    from cache import CacheError
    from heads.evaluate import ExplainConfig, run_explain

    try:
        cfg = ExplainConfig(
            cache=cache, index=index, head=head, split=split, out=out, top_k=top_k,
            normalize=normalize.value, device=device,
        )  # fmt: skip
        result = run_explain(cfg)
    except (ValueError, CacheError) as e:
        fail(str(e))
    typer.echo(result.summary())
    typer.echo(f"wrote {result.files['png']} and {result.files['csv']}")


if __name__ == "__main__":
    app()
