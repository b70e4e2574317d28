"""Progress bars (tqdm) on a management command's stderr, through its public write() and flush().

tqdm needs a file with write(str) and flush(). A command's `self.stderr` is Django's
OutputWrapper, whose write() adds a newline and, on a terminal, the error colour: neither belongs
in a bar that tqdm redraws in place with "\\r". Handing tqdm the stream inside the wrapper would
mean reading the wrapper's private `_out`; CommandStderrForProgress writes tqdm's text as it is
instead (no ending, no style) and flushes through the wrapper.

So that the bar looks as it did on the stream itself, tqdm also learns the stream's encoding
(a UTF-8 terminal gets the smooth Unicode bar, anything else ASCII) and, through fileno(), the
terminal's width, which progress_bar asks tqdm to follow (dynamic_ncols).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import OutputWrapper
from tqdm import tqdm


def _unstyled(text: str) -> str:
    return text


class CommandStderrForProgress:
    """A command's stderr as tqdm's file: what tqdm writes goes out unchanged."""

    def __init__(self, stderr: OutputWrapper) -> None:
        self._stderr = stderr

    def write(self, text: str) -> None:
        # style_func: OutputWrapper would otherwise colour the bar as an error on a terminal.
        self._stderr.write(text, style_func=_unstyled, ending="")

    def flush(self) -> None:
        self._stderr.flush()

    @property
    def encoding(self) -> str | None:
        """The stream's encoding: tqdm draws its Unicode bar only on a UTF-8 stream."""
        return getattr(self._stderr, "encoding", None)

    def fileno(self) -> int:
        """The stream's descriptor, for tqdm to size the bar to the terminal (OSError if none)."""
        return self._stderr.fileno()


def progress_bar(stderr: OutputWrapper, **options: Any) -> tqdm:
    """A tqdm bar drawn on a command's stderr (`self.stderr`), as wide as its terminal."""
    return tqdm(file=CommandStderrForProgress(stderr), dynamic_ncols=True, **options)
