"""The one progress bar: `bar(iterable, enabled=..., desc=...)`, tqdm that suits where stderr goes.

On a terminal it is `tqdm.auto.tqdm` as before (redrawn in place with `\\r`); in a notebook, the
notebook widget. When stderr is a file or a pipe (a log, `2> run.log`, a batch job), redrawing
would write a `\\r` frame every refresh (dozens stuck at 0 % while a model loads), so the bar
writes plain lines instead: one when it starts, one at each tenth of its total and one at the
end. Every tqdm of the project is made here (`grep "tqdm(" pipeline heads cache` finds only
this module).
"""

from __future__ import annotations

import sys

from tqdm import tqdm as _std_tqdm
from tqdm.auto import tqdm as _auto_tqdm

STEPS = 10  # lines a redirected bar writes between its first and last


def is_terminal(stream=None) -> bool:
    """Is `stream` (default: stderr) an interactive terminal?"""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _in_notebook() -> bool:
    from tqdm import autonotebook

    return autonotebook.tqdm.__module__.startswith("tqdm.notebook")


class LineBar(_std_tqdm):
    """tqdm for a stderr that is not a terminal: a plain line per tenth of the total, no `\\r`
    redraws, no cursor movement (a bar without a total writes its first and last line)."""

    def __init__(self, *args, **kwargs):
        self._step_shown: int | None = None  # set before tqdm's first display in __init__
        self._n_shown: float | None = None
        super().__init__(*args, **kwargs)

    def _step(self) -> int:
        return int(STEPS * self.n / self.total) if self.total else 0

    def _line(self) -> None:
        self.fp.write(self.__str__() + "\n")
        getattr(self.fp, "flush", lambda: None)()
        self._step_shown, self._n_shown = self._step(), self.n

    def display(self, msg=None, pos=None):
        if msg is not None:  # tqdm clearing its line (leave=False): a log keeps its lines
            return False
        if self._step_shown is None or self._step() > self._step_shown:
            self._line()
        return True

    def close(self):
        if not self.disable and self._n_shown != self.n:
            self._line()  # the final count, once
        self.leave = False  # the last line is written: tqdm's own close only tidies up
        super().close()


def bar(iterable=None, *, enabled: bool = True, file=None, **kwargs):
    """A tqdm over `iterable` (or with `total=`), shown only when `enabled` (a command's
    --progress), redrawn on a terminal and written as a few plain lines elsewhere."""
    if not enabled:
        return _std_tqdm(iterable, disable=True, **kwargs)
    stream = sys.stderr if file is None else file
    if is_terminal(stream) or (file is None and _in_notebook()):
        return _auto_tqdm(iterable, file=file, **kwargs)
    kwargs.pop("dynamic_ncols", None)  # a file has no width to follow
    return LineBar(iterable, file=stream, **kwargs)
