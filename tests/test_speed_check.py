"""The background speed check (engine/speed_check.py) times on an idle machine, and its figures are kept per
OpenMP wait policy (quantized.speed_key)."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_alnet.engine import quantized, speed_check


def test_it_waits_for_the_other_tasks_to_end_then_measures(monkeypatch):
    seen = iter([2, 1, 0])
    monkeypatch.setattr(speed_check, "other_running_tasks", lambda: next(seen))
    assert speed_check.wait_until_idle(30, poll=0) is True
    with pytest.raises(StopIteration):
        next(seen)  # it looked until the queue was empty, and no further


def test_it_gives_up_waiting_after_its_limit_and_needs_no_run_queue(monkeypatch):
    calls = []
    monkeypatch.setattr(speed_check, "other_running_tasks", lambda: calls.append(1) or 3)
    assert speed_check.wait_until_idle(0, poll=0) is False and len(calls) == 1
    monkeypatch.setattr(speed_check, "other_running_tasks", lambda: None)
    assert speed_check.wait_until_idle(30, poll=0) is True


def test_figures_are_kept_per_wait_policy_and_the_background_run_waits_for_idle(tmp_path: Path, monkeypatch):
    graph = tmp_path / "m.int8.onnx"
    graph.write_bytes(b"graph")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    passive = quantized.speed_key(graph, ("fp32", "int8"), 2)
    monkeypatch.delenv("OMP_WAIT_POLICY")
    spinning = quantized.speed_key(graph, ("fp32", "int8"), 2)
    assert passive != spinning and passive.endswith("PASSIVE") and spinning.endswith("DEFAULT")
    started: list[list[str]] = []
    monkeypatch.setattr(quantized, "start_background", started.append)
    monkeypatch.delenv(quantized.SPEED_CHECK_SWITCH, raising=False)
    quantized._measure_later.cache_clear()
    quantized._measure_later(str(tmp_path / "m.safetensors"), ("fp32", "int8"), 2)
    assert started and started[0][-2:] == ["--wait-idle", str(quantized.IDLE_WAIT)]
    quantized._measure_later.cache_clear()


def test_a_machine_that_stays_busy_is_not_measured(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(speed_check, "wait_until_idle", lambda seconds: False)
    monkeypatch.setattr(speed_check, "measure", lambda *a: pytest.fail("timed on a busy machine"))
    monkeypatch.setattr(speed_check.os, "nice", lambda n: 0)
    assert speed_check.main([str(tmp_path / "m.safetensors"), "--wait-idle", "5"]) == 0
    assert "stayed busy for 5 s; not measured" in capsys.readouterr().out
