"""The OpenMP wait policy per kind of work (engine/threads.py): chosen before torch loads, the user's value wins."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from napari_alnet.engine.threads import MARKER, command_kind, prepare_for


def _run(code: str, **env_extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", MARKER)} | env_extra
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.parametrize("argv, kind", [(["train", "--images", "x"], "train"), (["segment", "a.tif", "-o", "o"],
                                         "segment"), (["--quiet", "export", "em"], "segment"), ([], "segment")])
def test_a_command_line_names_its_kind_of_work(argv, kind):
    assert command_kind(argv) == kind


def test_training_busy_waits_segmenting_sleeps_and_the_viewer_spins_briefly():
    env: dict[str, str] = {}
    assert prepare_for("train", env) == "ACTIVE" and env["OMP_WAIT_POLICY"] == "ACTIVE"
    env = {}
    assert prepare_for("segment", env) == "PASSIVE" and env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert env[MARKER] == "segment"  # dask workers started from here inherit the choice
    assert prepare_for("viewer", env) is None and "OMP_WAIT_POLICY" not in env


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
