"""The pipelined stack engine: bounded hand-overs between threads, errors where they belong, the same outputs as
the serial path, and nothing left running or on disk after a stop."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import tifffile

from model_factory import calibrated_model, texture
from napari_alnet.engine import batch
from napari_alnet.engine.batch import segment_files_job
from napari_alnet.engine.pipeline import Drain, Prefetch
from napari_alnet.engine.progress import run_job, stop_job


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_prefetch_yields_in_order_and_stays_within_its_depth(depth):
    produced, consumed = [], []

    def produce(i):
        produced.append(i)
        return i * i

    prefetch = Prefetch(produce, range(12), depth)
    try:
        for value in prefetch:
            time.sleep(0.005)
            consumed.append(value)
            assert len(produced) - len(consumed) <= depth + 1  # queued + the one being produced
    finally:
        prefetch.close()
    assert consumed == [i * i for i in range(12)]


def test_prefetch_raises_in_the_consumer_at_the_failing_item():
    def produce(i):
        if i == 3:
            raise ValueError("slice 3: unreadable")
        return i

    prefetch = Prefetch(produce, range(6), 2)
    seen = []
    with pytest.raises(ValueError, match="slice 3"):
        for value in prefetch:
            seen.append(value)
    prefetch.close()
    assert seen == [0, 1, 2]


def test_a_closed_prefetch_stops_its_thread_early():
    started = threading.Event()

    def produce(i):
        started.set()
        return np.zeros(10)

    prefetch = Prefetch(produce, range(10_000), 2)
    started.wait(5)
    prefetch.close()
    assert not prefetch._thread.is_alive()


@pytest.mark.parametrize("depth", [0, 2])
def test_drain_consumes_in_order_and_reports_its_error(depth):
    out = []
    drain = Drain(out.append, depth)
    for i in range(20):
        drain.put(i)
    drain.finish()
    assert out == list(range(20))

    def consume(item):
        if item == 2:
            raise OSError("disk full")

    failing = Drain(consume, depth)
    with pytest.raises(OSError, match="disk full"):
        for i in range(50):
            failing.put(i)
        failing.finish()
    failing.close()


def _stack(path, depth=9):
    data = (texture((depth, 48, 56), 4, 2.0) * 3000).astype(np.uint16)
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZYX"})
    return path


def test_the_pipelined_and_the_serial_path_write_the_same_files(tmp_path, monkeypatch):
    model = calibrated_model(modality="em", threshold=0.5, objects="background")
    src = _stack(tmp_path / "s.tif")
    monkeypatch.setattr(batch, "QUEUE_DEPTH", 2)
    run_job(segment_files_job([src], tmp_path / "piped", model, probabilities=True, instances=True))
    monkeypatch.setattr(batch, "QUEUE_DEPTH", 0)
    run_job(segment_files_job([src], tmp_path / "serial", model, probabilities=True, instances=True))
    for name in ("s_labels.tif", "s_instances.tif", "s_prob.tif"):
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "piped" / name),
                                      tifffile.imread(tmp_path / "serial" / name))
    ids = tifffile.imread(tmp_path / "piped" / "s_instances.tif")
    firsts = [ids[z][ids[z] > 0].min() for z in range(len(ids)) if ids[z].any()]
    assert firsts == sorted(firsts)  # instance ids keep increasing across slices and batches


def test_a_stop_mid_stack_leaves_no_thread_and_no_partial_file(tmp_path, monkeypatch):
    monkeypatch.setattr(batch, "QUEUE_DEPTH", 2)
    model = calibrated_model()
    src = _stack(tmp_path / "s.tif", depth=12)
    before = threading.active_count()
    job = segment_files_job([src], tmp_path / "out", model, probabilities=True)
    next(job)
    next(job)  # one batch done: the reader thread is ahead, the writer behind
    summary = stop_job(job)
    assert summary.stopped and not summary.written
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before


@pytest.mark.parametrize("depth", [0, 2])
def test_a_reader_failure_fails_that_file_only(tmp_path, monkeypatch, depth):
    monkeypatch.setattr(batch, "QUEUE_DEPTH", depth)
    model = calibrated_model()
    good = _stack(tmp_path / "a.tif", depth=5)
    bad = tmp_path / "b.tif"
    tifffile.imwrite(bad, np.full((5, 48, 56), np.nan, np.float32), imagej=True, metadata={"axes": "ZYX"})
    summary = run_job(segment_files_job([good, bad], tmp_path / "out", model))
    assert [p.name for p in summary.written] == ["a_labels.tif"]
    assert len(summary.failures) == 1 and "slice 0" in summary.failures[0][1]
    assert not any(p.name.startswith(".") for p in (tmp_path / "out").iterdir())


def test_the_pipeline_runs_only_where_torch_leaves_a_core(monkeypatch):
    import torch

    monkeypatch.setattr(batch.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert batch.pipeline_depth() == 0
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert batch.pipeline_depth() == 2
    monkeypatch.setattr(batch, "QUEUE_DEPTH", 0)
    assert batch.pipeline_depth() == 0
