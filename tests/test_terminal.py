"""``terminal.ProgressBar``: a tqdm bar on a terminal, one line per milestone off a terminal."""

from __future__ import annotations

import io
import json
import os
import re
import struct
import time

import pytest

from napari_alnet import terminal
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


class Clock:
    """Stands in for ``time.perf_counter`` in ``napari_alnet.terminal``: ``now`` moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    """A clock that moves only when told, without the heartbeat thread (it waits in real time; tested below)."""
    fake = Clock()
    monkeypatch.setattr(terminal.time, "perf_counter", fake)
    monkeypatch.setattr(ProgressBar, "_beat", lambda self: None)
    return fake


@pytest.mark.parametrize("mode", ["log", "json"])
def test_a_heartbeat_line_when_no_report_comes_and_none_after_close(mode):
    stream = io.StringIO()
    bar = ProgressBar("segment", "slices", stream=stream, mode=mode, every_seconds=0.2)
    bar(Progress(1, 10, "block 1/10", {"slices_per_s": 2.0, "eta_s": 4.5}))
    time.sleep(1.0)  # one long block: no report for 5 x every_seconds
    bar.close()
    lines = stream.getvalue().splitlines()
    time.sleep(0.3)
    assert stream.getvalue().splitlines() == lines  # the heartbeat stops with close()
    assert 2 <= len(lines) <= 6  # the report's line, then about one each 0.2 s
    if mode == "json":
        beats = [json.loads(line) for line in lines[1:]]
        assert all(b["heartbeat"].startswith("still working") and b["done"] == 1 for b in beats)
        assert all(b["eta_s"] < 4.5 for b in beats)
    else:
        assert all(re.fullmatch(r"segment \[#{2}\.{22}\] 1/10 10% 2\.00 slices/s ETA \d+s block 1/10 \(still "
                                r"working, \d+s since the last report\)", line) for line in lines[1:]), lines


def test_off_a_terminal_a_line_every_5_percent_with_rate_and_eta(clock):
    stream = io.StringIO()
    bar = ProgressBar("segment", "slices", stream=stream)
    for step in range(1, 101):
        clock.now += 0.5  # 2 slices/s, far below the 30 s between lines
        bar(Progress(step, 100, f"em.tif: slice {step}/100"))
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    # the first report, then each 5 % (5, 10, ... 100)
    assert [int(re.search(r"\] (\d+)/100", line).group(1)) for line in lines] == [1, *range(5, 101, 5)]
    assert lines[1] == "segment [#" + "." * 23 + "] 5/100 5% 2.00 slices/s ETA 48s em.tif: slice 5/100"
    assert lines[10].startswith("segment [############............] 50/100 50% 2.00 slices/s ETA 25s ")
    assert lines[-1] == "segment [########################] 100/100 100% 2.00 slices/s em.tif: slice 100/100"


def test_off_a_terminal_at_least_a_line_every_30_s(clock):
    stream = io.StringIO()
    bar = ProgressBar("segment", "slices", stream=stream)
    for step in range(1, 10):  # 1000 steps in all: no 5 % step is reached, but a report comes every 20 s
        clock.now += 20
        bar(Progress(step, 1000, f"block {step}"))
    lines = stream.getvalue().splitlines()
    assert [line.split()[-1] for line in lines] == ["1", "3", "5", "7", "9"]  # the first, then each 30 s or more
    assert " ETA 9h" in lines[0] or " ETA 5h" in lines[0]


def test_off_a_terminal_epoch_summaries_and_only_float_metrics(clock):
    stream = io.StringIO()
    bar = ProgressBar("train", "steps", stream=stream)
    _two_epochs(bar)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 6  # each step is a new 25 %, and each epoch's summary
    assert lines[1].startswith("train [############............] 2/4 50% ") and lines[1].endswith("epoch 1/2 loss 0.5")
    assert lines[2].endswith("epoch 1/2 done train_loss 0.25") and lines[-1].endswith("epoch 2/2 done train_loss 0.25")
    assert "failure" not in stream.getvalue() and "epoch 1 " not in stream.getvalue()


def test_off_a_terminal_unknown_total_and_write(clock):
    stream = io.StringIO()
    bar = ProgressBar("segment", "slices", stream=stream)
    bar(Progress(3, 0, "working"))
    bar(Progress(4, 0, "working"))  # no total, no 30 s: no line
    bar.write("alnet segment: error: broken.tif")
    bar(Progress(5, 0, "all done"))
    bar.close()
    lines = stream.getvalue().splitlines()
    assert re.fullmatch(r"segment 3 \d+\.\d\d slices/s working", lines[0])
    assert lines[1] == "alnet segment: error: broken.tif"
    assert re.fullmatch(r"segment 5 \d+\.\d\d slices/s all done", lines[2]) and len(lines) == 3


def test_rates_leave_out_skipped_work_or_take_the_jobs_own(clock):
    stream = io.StringIO()
    bar = ProgressBar("segment", "slices", stream=stream)
    clock.now += 1
    bar(Progress(90, 100, "skipped a.tif: outputs exist", {"skipped": 90}))
    clock.now += 4
    bar(Progress(100, 100, "b.tif: slice 10/10", {"skipped": 90}))
    lines = stream.getvalue().splitlines()
    assert " 0.00 slices/s " in lines[0] and " ETA" not in lines[0]  # nothing computed yet: no rate, no ETA
    assert " 2.00 slices/s " in lines[1]  # 10 slices in 5 s, not 100
    stream = io.StringIO()
    bar = ProgressBar("segment", "slices", stream=stream)
    bar(Progress(40, 100, "block 2/5 · 2.50 slices/s", {"slices_per_s": 2.5, "eta_s": 24.0, "blocks_done": 2}))
    assert " 2.50 slices/s ETA 24s block 2/5" in stream.getvalue() and "eta_s" not in stream.getvalue()


def test_json_lines_parse_and_say_done_total_unit_rate_eta_and_stage(clock):
    stream = io.StringIO()
    bar = ProgressBar("segment", "slices", stream=stream, mode="json")
    for step in range(1, 5):
        clock.now += 1
        bar(Progress(step, 4, f"block {step}/4", {"phase": "blocks", "blocks_done": step, "failure": ("x", "y")}))
    bar.write("alnet segment: error: x")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(records) == 5
    first = records[0]
    assert first == {"done": 1, "total": 4, "unit": "slices", "rate": 1.0, "eta_s": 3.0, "stage": "blocks",
                     "message": "block 1/4", "blocks_done": 1}
    assert records[3]["done"] == 4 and records[3]["eta_s"] == 0.0
    assert records[4] == {"message": "alnet segment: error: x"}


def test_none_shows_no_progress_but_errors(clock):
    stream = FakeTerminal()
    bar = ProgressBar("segment", "slices", stream=stream, mode="none")
    bar(Progress(1, 2, "a"))
    bar(Progress(2, 2, "b done"))
    bar.write("alnet segment: error: b.tif")
    bar.close()
    assert stream.getvalue() == "alnet segment: error: b.tif\n"
    with pytest.raises(ValueError, match="progress mode 'loud'"):
        ProgressBar("segment", mode="loud")


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
