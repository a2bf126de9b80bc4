"""Resume: a run killed with SIGKILL part-way, rerun with the same command, equals an uninterrupted run; a resume
knows what it resumes (model, precision, threads, source fingerprint, settings) and refuses anything else."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from ome_zarr.writer import write_image

from model_factory import calibrated_model, save_test_model, texture
from napari_alnet.engine.segmenter import load_model
from napari_alnet.engine.volume import COMPUTED, read_state, segment_volume, segment_volume_job
from napari_alnet.io.fingerprint import fingerprint, sample_regions
from napari_alnet.io.volumes import VolumeError, open_volume

BLOCK = (1, 160, 144)
RUN = """
import sys
from napari_alnet.engine.volume import segment_volume
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
    assert resumed.threads == 1  # kept from the killed run (OMP_NUM_THREADS=1), not this process's 2
    # the uninterrupted run of the same command in the same environment: 1 torch thread per block
    whole = segment_volume(model, source, tmp_path / "whole.zarr", block=BLOCK, instances="3d", probabilities=True,
                           threads=1)
    assert whole.objects == resumed.objects
    for name in ("killed.zarr", "killed_prob.zarr"):
        other = name.replace("killed", "whole")
        np.testing.assert_array_equal(zarr.open_array(tmp_path / name / "0", mode="r")[:],
                                      zarr.open_array(tmp_path / other / "0", mode="r")[:])


SMALL = (1, 64, 64)


@pytest.fixture(scope="module")
def model():
    return calibrated_model()


def _data(seed: int = 3, shape=(4, 64, 64)) -> np.ndarray:
    return (texture(shape, seed=seed, sigma=4) * 255).astype(np.uint8)


def _partial(model, source, dest: Path, blocks: int = 2, **options) -> None:
    """Run until ``blocks`` blocks are done, then stop (as a closed job: resumable)."""
    job = segment_volume_job(model, source, dest, block=SMALL, **options)
    for report in job:
        if report.metrics.get("phase") == "blocks" and report.metrics["blocks_done"] == blocks:
            break
    job.close()


def test_a_resume_keeps_the_torch_threads_it_started_with(tmp_path, model):
    """A block's float32 results depend on torch's thread count (docs/volumes.md): a resume computes its blocks
    with the threads the run started with, so it equals the uninterrupted run bit for bit."""
    data = _data()
    options = {"probabilities": True, "prob_dtype": "float32"}
    _partial(model, data, tmp_path / "v.zarr", threads=1, **options)
    resumed = segment_volume(model, data, tmp_path / "v.zarr", block=SMALL, **options)  # this process: 2 threads
    assert resumed.complete and resumed.blocks_resumed == 2 and resumed.threads == 1
    whole = segment_volume(model, data, tmp_path / "w.zarr", block=SMALL, threads=1, **options)
    assert whole.threads == 1
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "v_prob.zarr" / "0")[:],
                                  zarr.open_array(tmp_path / "w_prob.zarr" / "0")[:])
    _partial(model, data, tmp_path / "p.zarr", threads=1)
    with pytest.raises(VolumeError, match=r"numerics\.threads 1 then, 2 now.*--overwrite"):
        segment_volume(model, data, tmp_path / "p.zarr", block=SMALL, threads=2)


def test_a_resume_with_another_precision_or_model_is_refused(tmp_path, model):
    data = _data()
    _partial(model, data, tmp_path / "v.zarr")
    with pytest.raises(VolumeError, match=r"numerics\.precision fp32 then, bf16 now.*To start over: --overwrite"):
        segment_volume(model.with_precision("bf16"), data, tmp_path / "v.zarr", block=SMALL)
    other = calibrated_model(card={"summary": "another model"})
    with pytest.raises(VolumeError, match=r"\(model\.card\)"):
        segment_volume(other, data, tmp_path / "v.zarr", block=SMALL)
    summary = segment_volume(model, data, tmp_path / "v.zarr", block=SMALL)
    assert summary.complete and summary.blocks_resumed == 2


def test_a_different_array_of_the_same_shape_is_refused(tmp_path, model):
    data = _data()
    _partial(model, data, tmp_path / "v.zarr")
    with pytest.raises(VolumeError, match=r"\(source\.fingerprint\)"):
        segment_volume(model, _data(seed=4), tmp_path / "v.zarr", block=SMALL)
    changed = data.copy()
    changed[3, 63, 63] ^= 1  # one voxel: an in-memory NumPy array is hashed whole
    with pytest.raises(VolumeError, match=r"source\.fingerprint"):
        segment_volume(model, changed, tmp_path / "v.zarr", block=SMALL)
    summary = segment_volume(model, data.copy(), tmp_path / "v.zarr", block=SMALL)  # equal data: resumes
    assert summary.complete and summary.blocks_resumed == 2


def test_a_store_fingerprint_sees_sampled_chunks_and_metadata(tmp_path):
    source = tmp_path / "em.zarr"
    write_image(_data(shape=(6, 64, 64)), zarr.open_group(source, mode="w"), axes="zyx", scale_factors=[],
                storage_options={"chunks": (1, 32, 32)})
    first = fingerprint(open_volume(source))
    assert fingerprint(open_volume(source)) == first  # deterministic
    regions = sample_regions((6, 64, 64), (1, 32, 32))
    assert regions[0] == (slice(0, 1), slice(0, 32), slice(0, 32))
    assert regions[-1] == (slice(5, 6), slice(32, 64), slice(32, 64)) and len(regions) == 16
    group = zarr.open_group(source, mode="r+")
    array = group[next(iter(group.array_keys()))]
    array[5, 63, 63] = int(array[5, 63, 63]) ^ 1  # the last chunk is always sampled
    edited = fingerprint(open_volume(source))
    assert edited != first
    zarr.open_group(source, mode="r+").attrs["note"] = "re-exported"
    assert fingerprint(open_volume(source)) != edited
