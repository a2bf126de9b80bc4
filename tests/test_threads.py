"""The OpenMP wait policy per kind of work (engine/threads.py): chosen before torch loads, the user's value wins."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from napari_alnet.engine.threads import MARKER, REASON, command_kind, machine_busy, other_running_tasks, prepare_for


def _loadavg(tmp_path, running: int):
    path = tmp_path / f"loadavg-{running}"
    path.write_text(f"0.52 0.58 0.59 {running}/467 12345\n")
    return path


def _run(code: str, **env_extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", MARKER)} | env_extra
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.parametrize("argv, kind", [(["train", "--images", "x"], "train"), (["segment", "a.tif", "-o", "o"],
                                         "segment"), (["--quiet", "export", "em"], "segment"), ([], "segment")])
def test_a_command_line_names_its_kind_of_work(argv, kind):
    assert command_kind(argv) == kind


def test_training_busy_waits_segmenting_follows_the_machine_and_the_viewer_spins_briefly(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    env: dict[str, str] = {}
    assert prepare_for("train", env) == "ACTIVE" and env["OMP_WAIT_POLICY"] == "ACTIVE"
    env = {}
    assert prepare_for("segment", env, loadavg=_loadavg(tmp_path, 3)) == "PASSIVE"
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env[MARKER] == "segment"  # dask workers inherit the choice
    assert "2 other task(s) running" in env[REASON] and "sleep" in env[REASON]
    assert prepare_for("segment", env, loadavg=_loadavg(tmp_path, 1)) is None  # ours, so it may be replaced
    assert "OMP_WAIT_POLICY" not in env and "0 other task(s)" in env[REASON] and "spin" in env[REASON]
    assert prepare_for("viewer", env) is None and "OMP_WAIT_POLICY" not in env


def test_the_run_queue_counts_the_most_other_tasks_over_its_samples(tmp_path, monkeypatch):
    path = tmp_path / "loadavg"
    path.write_text("0.1 0.2 0.3 4/100 7\n")
    assert other_running_tasks(path, samples=2, interval=0) == 3
    assert other_running_tasks(tmp_path / "missing") is None
    path.write_text("garbage")
    assert other_running_tasks(path, samples=1) is None
    monkeypatch.setattr(os, "getloadavg", lambda: (0.25, 1.0, 1.0))
    assert machine_busy(_loadavg(tmp_path, 1)) == (
        False, "0 other task(s) running and load average 0.25 when the command started")


def test_recent_load_counts_as_busy_and_no_figures_as_idle(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.9, 1.0, 1.0))  # under half of 2 cores
    assert machine_busy(_loadavg(tmp_path, 1))[0] is False
    monkeypatch.setattr(os, "getloadavg", lambda: (1.5, 1.0, 1.0))
    assert machine_busy(_loadavg(tmp_path, 1))[0] is True
    assert machine_busy(tmp_path / "missing") == (True, "load average 1.50 when the command started")
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 1.0, 1.0))
    assert machine_busy(tmp_path / "missing")[0] is False

    def no_load():
        raise OSError("no load average")
    monkeypatch.setattr(os, "getloadavg", no_load)
    assert machine_busy(tmp_path / "missing") == (False, "no load figures on this system: assumed idle")


def test_a_busy_machine_makes_the_segment_command_sleep_before_torch_loads(tmp_path):
    code = ("import os, sys; from napari_alnet.engine.threads import prepare_for; "
            f"prepare_for('segment', loadavg={str(_loadavg(tmp_path, 5))!r}); import torch; "
            "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    assert _run(code) == "PASSIVE True"


def test_a_value_the_user_set_wins_but_ours_can_be_replaced():
    env = {"OMP_WAIT_POLICY": "PASSIVE"}
    assert prepare_for("train", env) == "PASSIVE" and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {}
    prepare_for("train", env)
    assert prepare_for("viewer", env) is None and "OMP_WAIT_POLICY" not in env


def test_unknown_kind_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown kind of work 'gpu'"):
        prepare_for("gpu", {})


def test_importing_the_package_loads_no_torch_so_the_choice_comes_first():
    code = ("import sys, napari_alnet; from napari_alnet.launch import main; "
            "print('torch' in sys.modules, napari_alnet.__version__)")
    assert _run(code).startswith("False")


def test_the_alnet_program_trains_with_active_threads_before_torch_loads():
    code = ("import os, sys; from napari_alnet.engine.threads import command_kind, prepare_for; "
            "prepare_for(command_kind(['train'])); import torch; print(os.environ.get('OMP_WAIT_POLICY'), "
            "'torch' in sys.modules)")
    assert _run(code) == "ACTIVE True"
    assert _run(code, OMP_WAIT_POLICY="PASSIVE") == "PASSIVE True"


def test_the_viewer_docks_leave_libgomps_bounded_spin():
    code = "import os, napari_alnet.widgets; print(os.environ.get('OMP_WAIT_POLICY'))"
    assert _run(code) == "None"
    assert _run(code, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"


def test_the_public_api_still_imports_from_the_package():
    import napari_alnet

    assert callable(napari_alnet.load_model) and napari_alnet.Segmenter.__name__ == "Segmenter"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = napari_alnet.nope
