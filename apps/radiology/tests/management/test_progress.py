"""management/progress.py: a command's progress bar, drawn through the public OutputWrapper API.

The bar must come out exactly as tqdm draws it on the stream itself (what the commands did by
handing tqdm OutputWrapper's private `_out`): no newline after each redraw, no error colour on a
terminal, the Unicode bar on a UTF-8 stream and as wide as the terminal.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import termios
import tty
from collections.abc import Iterator
from fcntl import ioctl
from typing import IO

import pytest
from django.core.management.base import OutputWrapper
from django.core.management.color import color_style
from tqdm import tqdm

from apps.radiology.management.progress import progress_bar

# No rate or time in the bar: two runs draw the same characters.
BAR = {"total": 4, "unit": "B", "unit_scale": True, "mininterval": 0, "bar_format": "{l_bar}{bar}| {n_fmt}/{total_fmt}"}


class TerminalLikeText(io.StringIO):
    """A UTF-8 text stream that says it is a terminal (OutputWrapper then applies its style)."""

    @property
    def encoding(self) -> str:
        return "utf-8"

    def isatty(self) -> bool:
        return True


def _command_stderr(stream: IO[str]) -> OutputWrapper:
    """A command's self.stderr on `stream`, styled as BaseCommand styles it."""
    stderr = OutputWrapper(stream)
    stderr.style_func = color_style(force_color=True).ERROR
    return stderr


def _draw(bar: tqdm) -> None:
    with bar:
        for _ in range(4):
            bar.update(1)


@pytest.mark.parametrize("stream_type", [io.StringIO, TerminalLikeText], ids=["captured", "terminal-like"])
def test_the_bar_is_what_tqdm_draws_on_the_stream_itself(stream_type: type[io.StringIO]) -> None:
    direct, through_command = stream_type(), stream_type()

    _draw(tqdm(file=direct, **BAR))
    _draw(progress_bar(_command_stderr(through_command), **BAR))

    assert through_command.getvalue() == direct.getvalue()
    assert "\x1b" not in through_command.getvalue()
    assert "\n" not in through_command.getvalue().rstrip("\n")


def test_a_utf8_stream_gets_the_unicode_bar_and_another_the_ascii_one() -> None:
    utf8, plain = TerminalLikeText(), io.StringIO()

    _draw(progress_bar(_command_stderr(utf8), **BAR))
    _draw(progress_bar(_command_stderr(plain), **BAR))

    assert utf8.getvalue().endswith("100%|" + "\u2588" * 10 + "| 4.00/4.00\n")
    assert plain.getvalue().endswith("100%|##########| 4.00/4.00\n")


END_MARK = "\x00end of drawing\x00"


@pytest.fixture
def terminal() -> Iterator[tuple[IO[str], int]]:
    """A pseudo-terminal 77 columns wide: a text stream on it, and the descriptor to read it."""
    reader, writer = os.openpty()
    tty.setraw(writer)
    ioctl(writer, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 77, 0, 0))
    stream = open(writer, "w", encoding="utf-8", closefd=True)  # noqa: SIM115 (closed below)
    try:
        yield stream, reader
    finally:
        stream.close()
        os.close(reader)


def _drawn(stream: IO[str], reader: int) -> bytes:
    """What was drawn on the terminal so far: read up to an end mark written after it."""
    stream.write(END_MARK)
    stream.flush()
    drawn = b""
    while not drawn.endswith(END_MARK.encode()):
        drawn += os.read(reader, 65536)
    return drawn.removesuffix(END_MARK.encode())


def test_on_the_process_terminal_the_bar_is_as_tqdm_draws_it_there(
    terminal: tuple[IO[str], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    stream, reader = terminal
    # The process's stderr, as when `manage.py` runs in a terminal (tqdm sizes its bar to
    # sys.stderr and sys.stdout only). Set here: pytest's capture replaces sys.stderr before
    # the test body runs.
    monkeypatch.setattr(sys, "stderr", stream)

    _draw(tqdm(file=stream, **BAR))
    direct = _drawn(stream, reader)
    _draw(progress_bar(_command_stderr(stream), **BAR))
    through_command = _drawn(stream, reader)

    assert through_command == direct
    last_redraw = through_command.decode().rstrip("\n").rsplit("\r", 1)[-1]
    assert last_redraw == "100%|" + "\u2588" * 60 + "| 4.00/4.00"
    assert len(last_redraw) == 76  # the terminal's width less one, as tqdm sizes a bar
