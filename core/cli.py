"""Typer commands built from config dataclasses, and the one error mapping of the CLI.

`config_command(app, name, Config, lazy=..., help=...)` adds a command whose options are
exactly the fields of `Config` (help, choices, option names and defaults from the
`core.config.option` metadata), so adding an option means adding one field. The command
builds the config, calls `run(config)` and prints `render(config, result)`. Errors: a
`core.errors.ClipCbmError` (bad input, with what to do) is printed as one line and exits 2;
anything else keeps its traceback (a bug, an out-of-memory).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import inspect
import logging
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from clipcbm.core.config import choices_of, flag_of
from clipcbm.core.errors import ClipCbmError
from clipcbm.core.location import as_location
from clipcbm.core.outputs import locked, output_of

NOISY_LOGGERS = ("httpx", "urllib3", "filelock", "huggingface_hub", "botocore", "aiobotocore",
                 "s3fs", "fsspec")  # fmt: skip


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str, code: int = 2) -> typing.NoReturn:
    """Print a user-facing error (no traceback) and exit non-zero."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def reported(fn: Callable[[], Any]) -> Any:
    """Run fn; a ClipCbmError becomes `error: <message>` and exit code 2."""
    try:
        return fn()
    except ClipCbmError as e:
        fail(str(e))


def _strip_optional(tp):
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _enum(name: str, values: tuple[str, ...]) -> type[enum.Enum]:
    return enum.Enum(name, [(v, v) for v in values], type=str)


def _cli_type(f: dataclasses.Field, tp):
    """(annotation typer understands, converter back to the config's value)."""
    if set(typing.get_args(tp)) - {type(None)} == {str, Path}:  # core.location.Location
        optional = type(None) in typing.get_args(tp)
        return (str | None if optional else str), (lambda v: None if v is None else as_location(v))
    base, optional = _strip_optional(tp)
    allowed = choices_of(f)
    if typing.get_origin(base) is tuple:  # tuple[X, ...] -> repeatable option
        item = typing.get_args(base)[0]
        if allowed is not None:
            e = _enum("".join(p.title() for p in f.name.split("_")), allowed)
            return list[e], (lambda v: None if v is None else tuple(x.value for x in v))
        return list[item], (lambda v: None if v is None else tuple(v))
    if allowed is not None:
        e = _enum("".join(p.title() for p in f.name.split("_")), allowed)
        ann = e | None if optional else e
        return ann, (lambda v: None if v is None else v.value)
    if base is Path or base in (str, int, float, bool):
        return (base | None if optional else base), (lambda v: v)
    raise TypeError(f"config field {f.name!r} has type {tp!r}, which the CLI cannot express")


def _parameter(f: dataclasses.Field, tp) -> tuple[inspect.Parameter, Callable]:
    ann, convert = _cli_type(f, tp)
    help_text = f.metadata.get("help", "")
    flag = flag_of(f)
    decls = [f"{flag}/--no-{flag[2:]}"] if ann is bool else [flag]
    if f.default is not dataclasses.MISSING:
        default = f.default
        if isinstance(default, tuple):
            default = list(default)  # typer converts choice strings to the Enum itself
        elif isinstance(default, str) and choices_of(f) is not None:
            default = ann.__args__[0](default) if typing.get_origin(ann) else ann(default)
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        default = inspect.Parameter.empty
    param = inspect.Parameter(
        f.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[ann, typer.Option(*decls, help=help_text, show_default=True)],
    )
    return param, convert


def config_command(
    app: typer.Typer,
    name: str,
    config_cls,
    *,
    lazy: Callable[[], tuple[Callable[[Any], Any], Callable[[Any, Any], str | None]]],
    help: str,  # noqa: A002
) -> None:
    """Register `name` on `app`: options from `config_cls`'s fields, then run + render.

    `lazy()` returns (run, render) at call time, so heavy modules (torch) are imported only
    when the command runs, never for `--help`; `render(config, result)` is the text printed.
    """
    hints = typing.get_type_hints(config_cls)
    params, converters = [], {}
    for f in dataclasses.fields(config_cls):
        if not f.metadata.get("cli", True):
            continue
        p, conv = _parameter(f, hints[f.name])
        params.append(p)
        converters[f.name] = conv
    verbose = inspect.Parameter(
        "verbose",
        inspect.Parameter.KEYWORD_ONLY,
        default=False,
        annotation=Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")],
    )
    params.append(verbose)

    def command(**kwargs):
        setup_logging(kwargs.pop("verbose", False))
        values = {k: converters[k](v) for k, v in kwargs.items()}

        def go():
            cfg = config_cls(**values)
            run_fn, render_fn = lazy()
            out = output_of(cfg)  # one writer per output: held for the whole run
            with locked(out) if out is not None else contextlib.nullcontext():
                result = run_fn(cfg)
            text = render_fn(cfg, result)
            if text:
                typer.echo(text)

        reported(go)

    # required (no default) parameters first: Python signatures demand it only for
    # positional parameters, but keeping the order stable makes --help read like the config
    params.sort(key=lambda p: p.default is not inspect.Parameter.empty)
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {}
    command.__doc__ = help
    command.__name__ = name.replace("-", "_")
    app.command(name, help=help)(command)
