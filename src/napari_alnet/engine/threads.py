"""How torch's OpenMP threads wait, chosen per kind of work (``prepare_for``), before torch loads libgomp.

libgomp reads ``OMP_WAIT_POLICY`` once, when torch loads it; it cannot change later in the process. So each entry
point says what the process is for before anything imports torch (this module imports neither torch nor any
other project module):

- ``train`` (``alnet train``, fine-tuning benchmarks): ``ACTIVE``. A training step has thousands of small parallel
  regions (backward, optimizer); a thread that sleeps between them pays a futex wake-up at each, which halved
  training speed (issue 27: 0.50 steps/s passive against 1.13 active).
- ``segment`` (``alnet segment`` and other batch commands): decided by what else the machine runs when the
  command starts (``machine_busy``). On an idle machine libgomp's default, a bounded spin (~0.1 ms, then sleep):
  the network's parallel regions follow each other within microseconds, and a thread woken by a futex at each
  doubled the time of a 512² bf16 forward (30 ms spinning, 55-75 ms sleeping on an idle AMD EPYC Zen 5). When
  other tasks are running, or the last minute's load average says half the cores were busy, ``PASSIVE``: a
  spinning thread then holds a core that the descheduled worker thread needs (100-slice stack with two busy
  programs beside it: 10.9 slices/s passive, 6.2 spinning).
- ``viewer`` (napari with the plugin's docks): the bounded spin, so fine-tuning in the dock trains at nearly
  full speed and an idle viewer's threads go to sleep within a millisecond instead of spinning for seconds.
- ``library`` (``import napari_alnet`` in a script): nothing is changed.

A value the user set in the environment always wins. Figures: ``python benchmarks/training_speed.py``,
``python benchmarks/stack.py --end-to-end``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

#: ``OMP_WAIT_POLICY`` per kind of work; ``None`` = libgomp's default (spin ``GOMP_SPINCOUNT`` times, then sleep);
#: ``ADAPTIVE`` = libgomp's default on an idle machine, ``PASSIVE`` on a busy one (``machine_busy``).
ADAPTIVE = "adaptive"
POLICIES: dict[str, str | None] = {"train": "ACTIVE", "segment": ADAPTIVE, "viewer": None, "library": None}
#: ``alnet`` sub-commands that are training work; every other sub-command is ``segment`` work.
TRAINING_COMMANDS = frozenset({"train", "finetune"})
#: Set in the environment once a kind is chosen, so that child processes (dask workers) inherit the choice and a
#: value we set is not mistaken for the user's.
MARKER = "NAPARI_ALNET_OMP_KIND"
#: Why the policy in effect was chosen (one line, set beside ``MARKER``; the CLI's ``--verbose`` log prints it).
REASON = "NAPARI_ALNET_OMP_REASON"
#: Samples of the run queue ``machine_busy`` takes, and the seconds between them; and the 1-minute load average per
#: core from which a machine counts as busy. Spinning under load costs far more (2-6x per forward) than sleeping on
#: an idle machine (1.2-2x), so the test leans to "busy": any other task seen running, or half the cores' worth of
#: recent load (which counts this command's own earlier runs too: a 10 s run adds ~0.3 to a 1-minute average).
LOAD_SAMPLES, LOAD_INTERVAL, BUSY_LOAD_PER_CORE = 3, 0.004, 0.5


def openmp_loaded() -> bool:
    """Whether torch (and with it libgomp, which has read its settings) is already imported in this process."""
    return "torch" in sys.modules


def other_running_tasks(loadavg: str | Path = "/proc/loadavg", *, samples: int = LOAD_SAMPLES,
                        interval: float = LOAD_INTERVAL) -> int | None:
    """The most tasks seen running beside this one over ``samples`` reads of the kernel's run queue (the 4th field
    of ``/proc/loadavg``, ``running/total``, counts the reader itself); ``None`` where there is no such file."""
    counts = []
    for i in range(max(1, samples)):
        try:
            running = Path(loadavg).read_text().split()[3].partition("/")[0]
            counts.append(max(0, int(running) - 1))
        except (OSError, IndexError, ValueError):
            return None
        if i + 1 < samples:
            time.sleep(interval)
    return max(counts)


def machine_busy(loadavg: str | Path = "/proc/loadavg") -> tuple[bool, str]:
    """Whether other work runs on this machine now or ran in the last minute, and why it is thought so (one line):
    another task in the run queue (``other_running_tasks``) or a 1-minute load average of ``BUSY_LOAD_PER_CORE``
    per core or more."""
    others = other_running_tasks(loadavg)
    try:
        load: float | None = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    if others is None and load is None:
        return False, "no load figures on this system: assumed idle"
    seen = [] if others is None else [f"{others} other task(s) running"]
    seen += [] if load is None else [f"load average {load:.2f}"]
    busy = bool(others) or (load is not None and load >= BUSY_LOAD_PER_CORE * (os.cpu_count() or 1))
    return busy, " and ".join(seen) + " when the command started"


def prepare_for(kind: str, environ: dict[str, str] | None = None, *,
                loadavg: str | Path = "/proc/loadavg") -> str | None:
    """Set ``OMP_WAIT_POLICY`` for ``kind`` unless the user set it or torch is loaded; returns the policy in effect
    (``None`` = libgomp's default)."""
    if kind not in POLICIES:
        raise ValueError(f"unknown kind of work {kind!r}; expected one of {sorted(POLICIES)}")
    env = os.environ if environ is None else environ
    user_set = "OMP_WAIT_POLICY" in env and MARKER not in env
    if user_set or (environ is None and openmp_loaded()):
        return env.get("OMP_WAIT_POLICY")
    policy, reason = POLICIES[kind], f"{kind} work"
    if policy == ADAPTIVE:
        busy, why = machine_busy(loadavg)
        policy = "PASSIVE" if busy else None
        reason = f"{kind} work, {why}: " + ("threads sleep between parallel regions" if busy
                                             else "threads spin briefly between parallel regions")
    if policy is None:
        env.pop("OMP_WAIT_POLICY", None)
    else:
        env["OMP_WAIT_POLICY"] = policy
    env[MARKER], env[REASON] = kind, reason
    return policy


def command_kind(argv: list[str]) -> str:
    """The kind of work of an ``alnet`` command line (its arguments after the program name)."""
    command = next((arg for arg in argv if not arg.startswith("-")), "")
    return "train" if command in TRAINING_COMMANDS else "segment"
