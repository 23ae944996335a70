"""Config dataclasses are the single source of truth: each field carries its CLI help and choices.

    @validated(HeadsConfigError)
    @dataclass(frozen=True)
    class FitHeadConfig:
        loss: str = option("sparse", "CBL loss, or a baseline.", choices=LOSSES)
        lam: float = option(1e-3, "l1 strength.", flag="--lambda")

`option` stores the help text, the allowed values (a registry's keys: the CLI builds its choice
list from them), the option name and unit notes in the field's metadata; `core.cli` turns a
config class into a typer command from exactly that. `validated` makes every `ValueError` that
`__post_init__` raises an instance of the stage's config error (a `core.errors.ConfigError`),
so the CLI reports it as a message while library callers can still catch `ValueError`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Iterable
from typing import Any

from clipcbm.core.errors import ConfigError

MISSING = dataclasses.MISSING


def option(
    default: Any = MISSING,
    help: str = "",  # noqa: A002 - the CLI's word for it
    *,
    choices: Iterable[str] | Callable[[], Iterable[str]] | None = None,
    flag: str | None = None,
    cli: bool = True,
    default_factory: Callable[[], Any] | None = None,
    compare: bool = True,
) -> Any:
    """A dataclass field with its CLI metadata (help, choices, option name, shown or not)."""
    meta = {"help": help, "choices": choices, "flag": flag, "cli": cli}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta, compare=compare)
    return dataclasses.field(default=default, metadata=meta, compare=compare)


def choices_of(f: dataclasses.Field) -> tuple[str, ...] | None:
    """The allowed values of a field (None: any value of its type)."""
    c = f.metadata.get("choices")
    if c is None:
        return None
    return tuple(c() if callable(c) else c)


def flag_of(f: dataclasses.Field) -> str:
    """The CLI option name of a field: its `flag`, else --field-name."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def check_choice(name: str, value, allowed, error: type[ConfigError] = ConfigError) -> None:
    if value not in tuple(allowed):
        raise error(f"{name} must be one of {list(allowed)}, got {value!r}")


def check_choices(config, error: type[ConfigError] = ConfigError) -> None:
    """Every field with `choices` holds one of them (None passes for optional fields)."""
    for f in dataclasses.fields(config):
        allowed = choices_of(f)
        value = getattr(config, f.name)
        if allowed is None or value is None:
            continue
        for v in value if isinstance(value, tuple | list) else (value,):
            check_choice(flag_of(f), v, allowed, error)


_AS_OPTION = r"(?=\s+(?:must|needs|applies|only|is given)\b|\s*\(|=|\s+')"  # "seed must"


def in_option_names(cls, message: str) -> str:
    """`message` with field names replaced by the option a user types (`lam` -> `--lambda`,
    `lr_cbl` -> `--lr-cbl`). A one-word name that is also an English word ("similarity",
    "split") is replaced only where it reads as the option: "split must ...", "split (...)"."""
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        flag = flag_of(f)
        word = "_" in f.name or flag != "--" + f.name
        tail = r"(?![\w\-'\"/(])" if word else _AS_OPTION
        message = re.sub(rf"(?<![\w\-.'\"/]){re.escape(f.name)}{tail}", flag, message)
    return message


def validated(error: type[ConfigError]):
    """Class decorator: ValueErrors of `__post_init__` become `error` (chained), choices checked."""

    def wrap(cls):
        post = getattr(cls, "__post_init__", None)

        @functools.wraps(post or (lambda self: None))
        def __post_init__(self):
            try:
                check_choices(self, error)
                if post is not None:
                    post(self)
            except ConfigError:
                raise
            except ValueError as e:
                raise error(in_option_names(cls, str(e))) from e

        cls.__post_init__ = __post_init__
        return cls

    return wrap
