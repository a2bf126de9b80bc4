"""Resume: a run killed with SIGKILL part-way, rerun with the same command, equals an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zarr
from ome_zarr.writer import write_image

from model_factory import save_test_model, texture
from napari_alnet.engine.blockwise import COMPUTED, read_state, segment_volume
from napari_alnet.engine.segmenter import load_model

BLOCK = (1, 160, 144)
RUN = """
import sys
from napari_alnet.engine.blockwise import segment_volume
from napari_alnet.engine.segmenter import load_model
model_path, source, dest = sys.argv[1:4]
segment_volume(load_model(model_path, device="cpu"), source, dest, block=(1, 160, 144), instances="3d",
               probabilities=True)
"""


def _done_blocks(dest: Path) -> int:
    try:
        states = read_state(zarr.open_array(dest / "alnet_state" / "blocks", mode="r"))
    except Exception:  # not created yet
        return 0
    return int((states >= COMPUTED).sum())


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path):
    weights = save_test_model(tmp_path / "m.safetensors")
    data = (texture((10, 160, 144), seed=4, sigma=5) * 255).astype(np.uint8)
    source = tmp_path / "em.zarr"
    write_image(data, zarr.open_group(source, mode="w"), axes="zyx", scale_factors=[],
                storage_options={"chunks": (1, 80, 72)})
    dest = tmp_path / "killed.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", RUN, str(weights), str(source), str(dest)], env=env)
    try:
        deadline = time.monotonic() + 300
        while _done_blocks(dest) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    group = zarr.open_group(dest, mode="r")
    assert group.attrs["napari_alnet"]["complete"] is False
    done = _done_blocks(dest)
    assert 3 <= done < 10

    model = load_model(weights, device="cpu")
    resumed = segment_volume(model, source, dest, block=BLOCK, instances="3d", probabilities=True)
    assert resumed.complete and resumed.blocks_resumed >= done and resumed.blocks_run == 10 - resumed.blocks_resumed
    whole = segment_volume(model, source, tmp_path / "whole.zarr", block=BLOCK, instances="3d", probabilities=True)
    assert whole.objects == resumed.objects
    for name in ("killed.zarr", "killed_prob.zarr"):
        other = name.replace("killed", "whole")
        np.testing.assert_array_equal(zarr.open_array(tmp_path / name / "0", mode="r")[:],
                                      zarr.open_array(tmp_path / other / "0", mode="r")[:])
