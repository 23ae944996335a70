"""`cli.py cache info` / `cache verify`: inspect and check embedding caches (no torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from clipcbm.core.cli import fail, reported

app = typer.Typer(no_args_is_help=True, help="Inspect and check embedding caches.")
PathArg = Annotated[Path, typer.Argument(help="Cache directory or .h5 file.")]


def render_info(info: dict) -> str:
    model = info.get("model", {})
    lines = [
        f"path        {info['path']} ({info['storage']}, {info['bytes_on_disk'] / 2**20:.1f} MiB)",
        f"complete    {info.get('complete')}"
        + (f" (in progress, staged in {info['staging']})" if info.get("staging") else ""),
        f"fingerprint {info.get('fingerprint')}",
        f"model       {model.get('id', '-')} (commit {model.get('commit') or '-'}), "
        f"E={info.get('embed_dim')}, logit scale {info.get('logit_scale')}",
        f"dataset     {info.get('dataset', {}).get('name', '-')}",
        f"concepts    {info['n_concepts'] if info['n_concepts'] is not None else '(not yet)'}"
        f" (sha256 {str(info.get('concepts_sha256'))[:12]})",
        f"classes     {info['n_classes'] if info['n_classes'] is not None else '(not yet)'}",
        f"views       {info.get('views', 0)} augmented views per image",
        f"created     {info.get('created')}",
    ]
    for s, d in info["split_rows"].items():
        lines.append(
            f"split {s:<6}{d['rows']} rows, shards {d['shards_done']} / {d['shards']} done, "
            f"{d['unreadable']} unreadable, complete={d['complete']}"
        )
    return "\n".join(lines)


@app.command("info")
def info_cmd(
    path: PathArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a cache's metadata and sizes."""
    from clipcbm.cache import cache_info

    info = reported(lambda: cache_info(path))
    typer.echo(json.dumps(info, indent=2, default=str) if as_json else render_info(info))


@app.command("verify")
def verify_cmd(path: PathArg) -> None:
    """Check completeness, shapes, finiteness, unit norms and per-shard checksums."""
    from clipcbm.cache import verify_cache

    problems = reported(lambda: verify_cache(path))
    if problems:
        for p in problems:
            typer.secho(f"FAIL {p}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
    typer.echo(f"OK {path}: complete, shapes, finite values, unit norms and checksums verified")


__all__ = ["app", "fail"]
