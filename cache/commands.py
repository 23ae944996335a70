"""`clipcbm cache info` / `cache verify`: inspect and check embedding caches (no torch)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from clipcbm.core.cli import fail, reported
from clipcbm.core.location import as_location, location_str

app = typer.Typer(no_args_is_help=True, help="Inspect and check embedding caches.")
PathArg = Annotated[
    str, typer.Argument(help="Cache directory, .h5 file, or URL (s3://, gs://, https://, hf://).")
]


def render_info(info: dict) -> str:
    model = info.get("model", {})
    size = info["bytes_on_disk"]
    mib = f"{size / 2**20:.1f} MiB" if size is not None else "size unknown"
    lines = [
        f"path        {info['path']} ({info['storage']}, {mib})",
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

    info = reported(lambda: cache_info(as_location(path)))
    typer.echo(json.dumps(info, indent=2, default=str) if as_json else render_info(info))


@app.command("verify")
def verify_cmd(path: PathArg) -> None:
    """Check completeness, shapes, finiteness, unit norms and per-shard checksums."""
    from clipcbm.cache import verify_cache

    problems = reported(lambda: verify_cache(as_location(path)))
    if problems:
        for p in problems:
            typer.secho(f"FAIL {p}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
    where = location_str(as_location(path))
    typer.echo(f"OK {where}: complete, shapes, finite values, unit norms and checksums verified")


def _copy(src: str, dest: str, verify: bool) -> None:
    from clipcbm.cache.transfer import copy_cache

    r = reported(lambda: copy_cache(as_location(src), as_location(dest), verify=verify))
    if r.status == "complete":
        typer.echo(f"OK {r.dest} already holds this cache, complete; nothing copied")
        return
    typer.echo(
        f"OK {r.source} -> {r.dest}: {r.copied} objects copied ({r.bytes_copied / 2**20:.1f} MiB)"
        + (f", {r.skipped} already there and verified" if r.skipped else "")
        + "; every object checked on arrival, marked complete"
    )


SrcArg = Annotated[str, typer.Argument(help="A complete zarr cache: path or URL.")]
DestArg = Annotated[str, typer.Argument(help="Where the copy goes: path or URL (empty, or an "
                    "unfinished copy of the same cache, which is resumed).")]  # fmt: skip
CopyVerify = Annotated[
    bool, typer.Option("--verify/--no-verify", help="Decode every array at the destination and "
                       "check its recorded per-shard sha256 before marking it complete.")
]  # fmt: skip


@app.command("push")
def push_cmd(src: SrcArg, dest: DestArg, verify: CopyVerify = True) -> None:
    """Copy a finished cache to a location (s3://, gs://, hf://, a path); resumable."""
    _copy(src, dest, verify)


@app.command("pull")
def pull_cmd(src: SrcArg, dest: DestArg, verify: CopyVerify = True) -> None:
    """Copy a finished cache from a location (s3://, gs://, http(s)://, hf://) here; resumable."""
    _copy(src, dest, verify)


__all__ = ["app", "fail"]
