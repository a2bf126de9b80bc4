"""The background measurement of which validated precision runs a model fastest on this CPU (no Qt).

``python -m napari_alnet.engine.speed_check WEIGHTS --candidates fp32,bf16,int8 --threads N`` is what
``quantized.measure_fastest`` starts, detached, when a model's int8 graph has not been timed here yet: at the lowest
scheduling priority it waits (``--wait-idle`` seconds at most) until no other task is running — the run that
started it is usually still segmenting; a machine that stays busy is not measured (a later run starts another
check), since contended figures would be kept for good —, loads the model as the engine does (fused,
channels-last, fp32), times each candidate (``quantized._measured``) and keeps the figures in
``quantized.speed_cache()``, under the OpenMP wait policy it inherited. The run that started it goes on without
int8; later ones choose by the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .devices import Fastest
from .quantized import _measured, graph_path, keep_speeds, speed_key
from .segmenter import Segmenter
from .threads import other_running_tasks

#: Seconds between looks at the run queue while waiting for an idle machine.
IDLE_POLL = 0.5


def measure(weights: str | Path, candidates: Sequence[str], threads: int) -> Fastest:
    """Time ``candidates`` for the weight file ``weights`` on ``threads`` threads and keep the figures."""
    torch.set_num_threads(threads)
    model = Segmenter.load(weights, device="cpu", precision="fp32")
    graph = model.int8_graph
    if graph is None:
        raise ValueError(f"{weights}: no usable int8 graph ({graph_path(weights).name}) to time")
    found = _measured(model.network, str(graph), tuple(candidates), threads)
    return keep_speeds(speed_key(graph, tuple(candidates), threads), found)


def wait_until_idle(seconds: float, *, poll: float = IDLE_POLL) -> bool:
    """Wait until no other task is running (``threads.other_running_tasks``), at most ``seconds``; whether it was
    idle (``True`` at once where there is no run queue to read)."""
    deadline = time.monotonic() + max(0.0, seconds)
    while True:
        others = other_running_tasks()
        if not others:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", help="the .safetensors weight file beside its .int8.onnx graph")
    parser.add_argument("--candidates", default="fp32,int8", help="comma-separated precisions to time")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--wait-idle", type=float, default=0.0,
                        help="seconds to wait at most for no other task to be running before timing")
    args = parser.parse_args(argv)
    with contextlib.suppress(OSError, AttributeError):  # lowest priority: the user's own work goes first
        os.nice(19)
    if args.wait_idle > 0 and not wait_until_idle(args.wait_idle):
        # figures timed beside other work would be kept for good and mislead every later auto: measure another time
        print(f"{Path(args.weights).name}: the machine stayed busy for {args.wait_idle:g} s; not measured")
        return 0
    found = measure(args.weights, args.candidates.split(","), max(1, args.threads))
    print(f"{Path(args.weights).name}: {found} -> {found.precision}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
