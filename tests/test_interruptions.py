"""Every way a run can end is clean: SIGTERM/SIGHUP like Ctrl-C, SIGKILL's leftovers removed by the next run,
usage errors refused before any work, exit codes as documented."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from model_factory import save_test_model
from napari_alnet import cli
from napari_alnet.io.atomic import remove_stale_parts, stale_parts, temp_path


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_test_model(tmp_path_factory.mktemp("model") / "m.safetensors")


def _stack(path: Path, depth: int) -> Path:
    rng = np.random.default_rng(0)
    tifffile.imwrite(path, rng.integers(0, 255, (depth, 256, 256), dtype=np.uint8), imagej=True,
                     metadata={"axes": "ZYX"})
    return path


def _start_segment(src: Path, out: Path, weights: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "napari_alnet.cli", "segment", str(src), "-o", str(out),
                             "--model", str(weights), "--device", "cpu"], stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_part(out: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before writing anything: {proc.stderr.read()}")
        if out.is_dir() and any(p.name.endswith(".part") for p in out.iterdir()):
            time.sleep(0.5)  # a few slices into the file
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no temporary output appeared")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)])
def test_a_signal_mid_file_leaves_no_partial_file_and_its_exit_code(tmp_path, weights, sig, code):
    src, out = _stack(tmp_path / "big.tif", 400), tmp_path / "out"
    proc = _start_segment(src, out, weights)
    _wait_for_part(out, proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == code, proc.stderr.read()
    assert "interrupted" in proc.stderr.read()
    assert sorted(p.name for p in out.iterdir()) == []  # neither a partial output nor a hidden temporary file


def test_sigkill_leftovers_are_removed_by_the_next_run(tmp_path, weights, capsys):
    src, out = _stack(tmp_path / "big.tif", 400), tmp_path / "out"
    proc = _start_segment(src, out, weights)
    _wait_for_part(out, proc)
    proc.kill()
    proc.wait(timeout=30)
    left = [p for p in out.iterdir() if p.name.endswith(".part")]
    assert left and stale_parts(out) == sorted(left)
    small = _stack(tmp_path / "small.tif", 2)
    assert cli.main(["segment", str(small), "-o", str(out), "--model", str(weights), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "removed 1 temporary file(s) left by an earlier interrupted run" in err and left[0].name in err
    assert sorted(p.name for p in out.iterdir()) == ["small_labels.tif"]


def test_a_live_runs_temporary_file_is_not_stale(tmp_path):
    mine = temp_path(tmp_path / "x.tif")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        theirs = tmp_path / f".y.tif.{other.pid}-0123abcd.part"
        theirs.write_bytes(b"")
        dead = tmp_path / ".z.tif.999999999-0123abcd.part"  # no such process
        dead.write_bytes(b"")
        assert stale_parts(tmp_path) == [dead]
        assert remove_stale_parts(tmp_path) == [dead] and mine.exists() and theirs.exists()
    finally:
        other.kill()


@pytest.mark.parametrize("args", [
    ["--threshold", "1.5"], ["--threshold", "-1"], ["--threshold", "nan"], ["--threshold", "0"],
    ["--device", "gpu"], ["--device", "cuda:9"],
])
def test_bad_flags_are_usage_errors_before_any_work(tmp_path, weights, capsys, args):
    src = _stack(tmp_path / "s.tif", 1)
    with pytest.raises(SystemExit) as stop:
        cli.main(["segment", str(src), "-o", str(tmp_path / "out"), "--model", str(weights), *args])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert args[0] in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# --- outputs appear complete or not at all, and never replace a file without consent ------------------------------

def test_a_file_that_appears_while_an_output_is_written_is_kept(tmp_path):
    from napari_alnet.io.atomic import publish

    target = tmp_path / "out.tif"
    tmp = temp_path(target)
    tmp.write_bytes(b"new")
    target.write_bytes(b"someone else's")  # appeared after any existence check
    with pytest.raises(FileExistsError, match="appeared while this output was being written"):
        publish(tmp, target, overwrite=False)
    assert target.read_bytes() == b"someone else's" and not tmp.exists()


def test_a_batch_run_that_lost_the_race_says_it_kept_the_other_runs_output(tmp_path, weights):
    """Two `alnet segment` runs into one folder: the output the other run published first is kept (not replaced),
    and the run that did not write it says so (a failure naming it, exit 1), leaving no temporary file."""
    from napari_alnet.engine.batch import segment_files_job
    from napari_alnet.engine.progress import run_job
    from napari_alnet.engine.segmenter import load_model

    src = _stack(tmp_path / "s.tif", 2)
    out = tmp_path / "out"
    job = segment_files_job([src], out, load_model(weights, device="cpu"))
    target = out / "s_labels.tif"
    summary = None
    while summary is None:
        try:
            report = next(job)
        except StopIteration as end:
            summary = end.value
            break
        if report.step >= 1 and not target.exists():
            target.write_bytes(b"the other run's")  # published by the other run while this one ran
    assert not summary.written and len(summary.failures) == 1
    assert "appeared while this output was being written" in summary.failures[0][1]
    assert "kept the other's and wrote nothing there" in summary.failures[0][1]
    assert target.read_bytes() == b"the other run's"
    assert sorted(p.name for p in out.iterdir()) == ["s_labels.tif"]
    again = run_job(segment_files_job([src], out, load_model(weights, device="cpu")))
    assert again.skipped == [target] and not again.written  # and a later run keeps it as an existing output


def test_concurrent_writers_of_one_path_never_clobber_each_other(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from napari_alnet.io.atomic import atomic_write

    target = tmp_path / "w.bin"

    def write(i: int) -> bool:
        try:
            atomic_write(target, lambda tmp: tmp.write_bytes(str(i).encode() * 10_000), overwrite=False)
            return True
        except FileExistsError:
            return False

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(write, range(16)))
    assert sum(won) == 1
    assert target.read_bytes() == str(won.index(True)).encode() * 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.bin"]


def test_a_full_disk_is_said_as_such_and_leaves_nothing(tmp_path):
    from napari_alnet.io.atomic import atomic_write

    def write(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match=r"out\.tif: the disk is full \(\d+ MB free on .*\); nothing was left"):
        atomic_write(tmp_path / "out.tif", write)
    assert list(tmp_path.iterdir()) == []


def test_a_short_write_reported_in_bytes_is_said_to_be_a_full_disk(tmp_path):
    from napari_alnet.io.atomic import write_error

    error = write_error(ValueError("262144 requested and 256928 written"), tmp_path / "x.tif")  # tifffile's words
    assert isinstance(error, OSError) and "the disk is full" in str(error) and "requested" not in str(error)
    other = write_error(ValueError("bad tag"), tmp_path / "x.tif")
    assert "disk is full" not in str(other) and "bad tag" in str(other)
