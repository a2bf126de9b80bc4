"""How torch's OpenMP threads wait, chosen per kind of work (``prepare_for``), before torch loads libgomp.

libgomp reads ``OMP_WAIT_POLICY`` once, when torch loads it; it cannot change later in the process. So each entry
point says what the process is for before anything imports torch (this module imports neither torch nor any
other project module):

- ``train`` (``alnet train``, fine-tuning benchmarks): ``ACTIVE``. A training step has thousands of small parallel
  regions (backward, optimizer); a thread that sleeps between them pays a futex wake-up at each, which halved
  training speed (issue 27: 0.50 steps/s passive against 1.13 active).
- ``segment`` (``alnet segment`` and other batch commands): ``PASSIVE``. Inference has ~100 large parallel regions
  per slice, so sleeping costs nothing measurable (512² predict 85 ms passive, 92 default, 178 active on an idle
  AMD EPYC, where ``auto`` runs int8 in ONNX Runtime's own threads beside torch's), and under load a spinning
  thread stalls a descheduled one at every region (stacks 5.77 slices/s passive against 1.96 active).
- ``viewer`` (napari with the plugin's docks): the same bounded spin, so fine-tuning in the dock trains at nearly
  full speed and an idle viewer's threads go to sleep within a millisecond instead of spinning for seconds.
- ``library`` (``import napari_alnet`` in a script): nothing is changed.

A value the user set in the environment always wins. Figures: ``python benchmarks/training_speed.py``.
"""

from __future__ import annotations

import os
import sys

#: ``OMP_WAIT_POLICY`` per kind of work; ``None`` = libgomp's default (spin ``GOMP_SPINCOUNT`` times, then sleep).
POLICIES: dict[str, str | None] = {"train": "ACTIVE", "segment": "PASSIVE", "viewer": None, "library": None}
#: ``alnet`` sub-commands that are training work; every other sub-command is ``segment`` work.
TRAINING_COMMANDS = frozenset({"train", "finetune"})
#: Set in the environment once a kind is chosen, so that child processes (dask workers) inherit the choice and a
#: value we set is not mistaken for the user's.
MARKER = "NAPARI_ALNET_OMP_KIND"


def openmp_loaded() -> bool:
    """Whether torch (and with it libgomp, which has read its settings) is already imported in this process."""
    return "torch" in sys.modules


def prepare_for(kind: str, environ: dict[str, str] | None = None) -> str | None:
    """Set ``OMP_WAIT_POLICY`` for ``kind`` unless the user set it or torch is loaded; returns the policy in effect
    (``None`` = libgomp's default)."""
    if kind not in POLICIES:
        raise ValueError(f"unknown kind of work {kind!r}; expected one of {sorted(POLICIES)}")
    env = os.environ if environ is None else environ
    user_set = "OMP_WAIT_POLICY" in env and MARKER not in env
    if user_set or (environ is None and openmp_loaded()):
        return env.get("OMP_WAIT_POLICY")
    policy = POLICIES[kind]
    if policy is None:
        env.pop("OMP_WAIT_POLICY", None)
    else:
        env["OMP_WAIT_POLICY"] = policy
    env[MARKER] = kind
    return policy


def command_kind(argv: list[str]) -> str:
    """The kind of work of an ``alnet`` command line (its arguments after the program name)."""
    command = next((arg for arg in argv if not arg.startswith("-")), "")
    return "train" if command in TRAINING_COMMANDS else "segment"
