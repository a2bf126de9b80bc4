"""``terminal.ProgressBar``: a tqdm bar on a terminal, one line per milestone off a terminal."""

from __future__ import annotations

import io
import os
import re
import struct

import pytest

from napari_alnet.engine.progress import Progress
from napari_alnet.terminal import ProgressBar


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _two_epochs(bar: ProgressBar, steps: int = 4) -> None:
    """``steps`` steps over two epochs, each epoch ending in a "done" report, as fast as they come."""
    half = steps // 2
    for step in range(1, steps + 1):
        epoch = (step - 1) // half + 1
        bar(Progress(step, steps, f"epoch {epoch}/2", {"loss": 0.5, "epoch": epoch}))
        if step % half == 0:
            bar(Progress(step, steps, f"epoch {epoch}/2 done", {"train_loss": 0.25, "failure": ("x", "y")}))


def _frames(text: str) -> list[str]:
    """What a terminal showed, frame by frame: tqdm redraws a line after a carriage return."""
    return [frame.rstrip() for frame in re.split(r"[\r\n]", text) if frame.strip()]


def test_off_a_terminal_only_milestones_one_line_each():
    stream = io.StringIO()
    bar = ProgressBar("train", "steps", stream=stream)
    _two_epochs(bar)
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == 3  # the two epoch summaries and the last report (4/4, not "done")
    first, second, last = lines
    assert first.startswith("train [############............] 2/4 ")
    assert re.search(r" \d+\.\d\d steps/s epoch 1/2 done train_loss 0\.25$", first)
    assert " 4/4 " in second and second.endswith("epoch 2/2 loss 0.5")
    assert last.endswith("epoch 2/2 done train_loss 0.25")
    assert "failure" not in text and "epoch 1 " not in text  # only float metrics are shown


def test_off_a_terminal_unknown_total_and_write():
    stream = io.StringIO()
    bar = ProgressBar("segment", "slices", stream=stream)
    bar(Progress(3, 0, "working"))
    bar.write("alnet segment: error: broken.tif")
    bar(Progress(5, 0, "all done"))
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "alnet segment: error: broken.tif"
    assert re.fullmatch(r"segment 5 \d+\.\d\d slices/s all done", lines[1]) and len(lines) == 2


def test_on_a_terminal_a_tqdm_bar_with_rate_message_and_metrics():
    stream = FakeTerminal()
    bar = ProgressBar("train", "steps", stream=stream)
    _two_epochs(bar)
    bar.close()
    text = stream.getvalue()
    assert text.startswith("\r") and text.endswith("\n") and text.count("\n") == 1  # one line, redrawn
    frames = _frames(text)
    assert frames[0].startswith("train:  25%|") and "1/4" in frames[0] and "epoch 1/2 loss 0.5" in frames[0]
    # the milestones are drawn however fast they come; tqdm's rate has the unit
    assert any("2/4" in f and f.endswith("steps/s, epoch 1/2 done train_loss 0.25]") for f in frames)
    assert re.search(r"train: 100%\|#+\| 4/4 \[[0-9:<]+, [0-9.]+steps/s, epoch 2/2 done train_loss 0\.25\]$",
                     frames[-1])
    assert "failure" not in text
    assert max(map(len, frames)) == 150  # no width to follow: tqdm fills FALLBACK_COLUMNS


def _read_all(master: int) -> bytes:
    """Everything written to a pty whose other side is closed (a read may return only part of it)."""
    chunks = []
    try:
        while chunk := os.read(master, 1 << 16):
            chunks.append(chunk)
    except OSError:  # EIO: all read and the other side closed
        pass
    finally:
        os.close(master)
    return b"".join(chunks)


@pytest.mark.parametrize(("lines", "columns"), [(30, 60), (0, 0), (0, 60), (30, 0)])
def test_on_a_pty_the_bar_follows_its_width_and_is_drawn_when_it_says_none(lines, columns):
    termios = pytest.importorskip("termios")
    fcntl = pytest.importorskip("fcntl")
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    with open(slave, "w", encoding="utf-8") as stream:
        bar = ProgressBar("segment", "slices", stream=stream)
        bar(Progress(1, 2, "a.tif"))
        bar(Progress(2, 2, "b.tif " + "x" * 200))
        bar.close()
    text = _read_all(master).decode("utf-8")
    frames = _frames(text)
    assert frames and all("segment:" in f for f in frames) and "2/2" in frames[-1]
    widest = max(map(len, frames))  # tqdm keeps the last column free on a real terminal
    assert widest == 150 if 0 in (lines, columns) else columns - 1 <= widest <= columns


def test_on_a_terminal_redraws_are_throttled_but_milestones_are_not():
    stream = FakeTerminal()
    bar = ProgressBar("segment", "slices", stream=stream)
    for step in range(1, 2001):
        bar(Progress(step, 2000, f"slice {step}" + (" done" if step == 1000 else "")))
    bar.close()
    frames = _frames(stream.getvalue())
    assert len(frames) < 100  # 2000 reports within far less than 0.2 s each
    assert any(f.endswith("slice 1000 done]") and "1000/2000" in f for f in frames)
    assert "2000/2000" in frames[-1] and frames[-1].endswith("slice 2000]")


def test_on_a_terminal_write_keeps_the_bar_and_close_then_report_starts_a_new_one():
    stream = FakeTerminal()
    bar = ProgressBar("segment", "slices", stream=stream)
    bar(Progress(1, 4, "a.tif: slice 1/2"))
    bar.write("alnet segment: error: b.tif: truncated")
    text = stream.getvalue()
    error_at = text.index("alnet segment: error: b.tif: truncated\n")
    assert "1/4" in text[error_at:]  # the bar is drawn again below the message
    bar.close()
    closed = stream.getvalue()
    assert closed.endswith("\n")
    bar(Progress(0, 0, "next"))
    bar.close()
    assert "segment: 0slices" in stream.getvalue()[len(closed):]
    bar.close()  # closing twice is harmless
    assert stream.getvalue().count("\n") == 3


def test_default_stream_is_stderr(capsys):
    bar = ProgressBar("evaluate", "images")
    bar(Progress(1, 1, "x.png"))
    bar.close()
    captured = capsys.readouterr()
    assert captured.out == "" and "evaluate [" in captured.err and "images/s x.png" in captured.err
