"""The ``alnet`` program (launch.py): the command's exit code and all its output survive leaving without the
interpreter's teardown, and a process with work still running exits normally."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile

from napari_alnet.engine.threads import MARKER


def _program(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != MARKER}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300)


def test_the_program_segments_prints_its_summary_and_keeps_the_exit_code(tmp_path: Path):
    image = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "slice.tif", image)
    code = "import sys; from napari_alnet.launch import main; sys.argv[0] = 'alnet'; sys.exit(main())"
    done = _program(code, "segment", str(tmp_path / "slice.tif"), "-o", str(tmp_path / "out"), "--quiet")
    assert done.returncode == 0, done.stderr
    assert "segmented 1 slices" in done.stdout and done.stdout.endswith("\n")
    labels = tifffile.imread(tmp_path / "out" / "slice_labels.tif")
    assert labels.shape == (64, 64)
    missing = _program(code, "segment", str(tmp_path / "nope.tif"), "-o", str(tmp_path / "out2"), "--quiet")
    assert missing.returncode != 0 and "nope.tif" in missing.stderr


def test_leaving_flushes_unfinished_lines_and_waits_for_running_threads(tmp_path: Path):
    flag = tmp_path / "thread-finished"
    code = ("import sys, threading, time; from napari_alnet.launch import leave\n"
            "sys.stdout.write('no newline yet'); sys.stderr.write('err text')\n"
            "leave(3)\n"
            "print(' ...still here', end='')\n"
            f"t = threading.Thread(target=lambda: (time.sleep(0.3), open({str(flag)!r}, 'w').close()))\n"
            "t.start(); leave(4)\n"
            "sys.exit(5)\n")
    done = _program(code)
    assert done.returncode == 3 and done.stdout == "no newline yet" and done.stderr == "err text"
    done = _program(code.replace("leave(3)\n", ""))
    assert done.returncode == 5 and flag.exists()  # a running thread: leave returns, the normal exit waits for it
    assert done.stdout.endswith("...still here")
