"""The network's own speed per backend, side by side in one process: ms per 512² forward of a shipped model's fused
network (batch 1), and how far each backend's probabilities are from eager fp32.

    python benchmarks/backends.py [--model em] [--size 512] [--threads 2] [--runs 10]
                                  [--compile-timeout 300] [--no-compile] [--no-openvino]

Candidates: torch eager fp32 and bf16 (channels-last, inference mode, bf16 through autocast: what the engine
runs), ``torch.compile`` (inductor) of the same in fp32 and bf16 — compiled first, each within
``--compile-timeout`` seconds (a compile that fails or runs out of time is reported and left out) —, ONNX Runtime
fp32 (the fused network exported as ``engine.quantized`` exports it) and int8 (the model's shipped QDQ graph, what
``--precision int8`` runs), and OpenVINO fp32, bf16 and int8 (the same two ONNX graphs) where ``openvino`` is
installed (``pip install openvino``; not a dependency of the engine). Every backend runs on ``--threads`` threads
with the engine's OpenMP wait policy (``engine.threads.prepare_for("segment")`` before torch loads). Timing is
round-robin (one call of each candidate per round, median of ``--runs`` rounds after a warm-up), so a shared
machine's drifting load hits them alike; the CPU and whether it computes bf16 natively are printed first.
Agreement: max |Δp| and the share of pixels whose label (p > 0.5) matches eager fp32 on an EM-like slice.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from napari_alnet.engine.threads import prepare_for

WAIT_POLICY = prepare_for("segment")  # before torch loads libgomp, as the alnet program does

import numpy as np  # noqa: E402
import torch  # noqa: E402

from napari_alnet import load_model  # noqa: E402
from napari_alnet.engine.devices import cpu_bf16_support  # noqa: E402
from napari_alnet.engine.normalization import model_input  # noqa: E402
from napari_alnet.engine.quantized import export_fp32, session_options  # noqa: E402
from napari_alnet.io.sample_data import em_like_stack  # noqa: E402

Call = Callable[[], np.ndarray]


def _cpu() -> str:
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    return f"{name}, {os.cpu_count()} cores, {cpu_bf16_support().reason}"


def _torch_call(network: torch.nn.Module, x: torch.Tensor, bf16: bool) -> Call:
    x = x.contiguous(memory_format=torch.channels_last)

    def call() -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            return network(x).float().numpy()
    return call


class _Timeout(Exception):
    pass


def _compiled(network: torch.nn.Module, x: torch.Tensor, bf16: bool, timeout: int) -> tuple[Call | None, str]:
    """``torch.compile`` (inductor) of ``network``, compiled by its first call within ``timeout`` s."""
    def alarm(*_) -> None:
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(timeout)
    start = time.perf_counter()
    try:
        call = _torch_call(torch.compile(network, backend="inductor", dynamic=False), x, bf16)
        call()
        return call, f"compiled in {time.perf_counter() - start:.0f} s"
    except _Timeout:
        return None, f"not compiled within {timeout} s"
    except Exception as exc:  # a backend that fails is reported, never fatal
        return None, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _feeds(x: torch.Tensor, width: int) -> dict[str, np.ndarray]:
    return {"image": x.numpy(), "pooled": np.zeros((1, width, 1, 1), np.float32), "own": np.ones((), np.float32)}


def _onnxruntime(path: Path, feeds: dict[str, np.ndarray], threads: int) -> Call:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    return lambda: session.run(["logits"], feeds)[0]


def _openvino(path: Path, feeds: dict[str, np.ndarray], threads: int, precision: str) -> Call:
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision,
              "PERFORMANCE_HINT": "LATENCY"}
    request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()
    return lambda: np.asarray(request.infer(feeds)["logits"])


def candidates(args: argparse.Namespace, folder: Path) -> tuple[dict[str, Call], dict[str, str]]:
    """Every backend that starts here, and a note per candidate (compile time, why one was left out)."""
    model = load_model(args.model, device="cpu", precision="fp32")
    network = model.network
    image = em_like_stack(depth=1, size=args.size, cells=max(8, round(240 * (args.size / 512) ** 2)))[0][0]
    x = torch.from_numpy(model_input(image, model.metadata))[None]
    calls: dict[str, Call] = {"torch eager fp32": _torch_call(network, x, False),
                              "torch eager bf16": _torch_call(network, x, True)}
    notes: dict[str, str] = {}
    for bf16 in ([] if args.no_compile else [False, True]):
        name = f"torch.compile inductor {'bf16' if bf16 else 'fp32'}"
        call, notes[name] = _compiled(network, x, bf16, args.compile_timeout)
        if call is not None:
            calls[name] = call
    fp32, int8 = folder / "fp32.onnx", model.int8_graph
    export_fp32(network, fp32)
    feeds = _feeds(x, network.config.stage_widths[-1])
    graphs = {"fp32": fp32, "int8": int8}
    calls["onnxruntime fp32"] = _onnxruntime(fp32, feeds, args.threads)
    if int8 is not None:
        calls["onnxruntime int8 (shipped graph)"] = _onnxruntime(int8, feeds, args.threads)
    for name, graph, hint in (("openvino fp32", "fp32", "f32"), ("openvino bf16", "fp32", "bf16"),
                              ("openvino int8 (shipped graph)", "int8", "f32")):
        if args.no_openvino or graphs[graph] is None:
            continue
        try:
            calls[name] = _openvino(graphs[graph], feeds, args.threads, hint)
        except Exception as exc:  # not installed, or this CPU lacks the precision
            notes[name] = f"left out: {type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''}"
    return calls, notes


def round_robin(calls: dict[str, Call], runs: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Median ms per call of each candidate (one call each per round, one warm-up round) and its last output."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    outputs: dict[str, np.ndarray] = {}
    for round_ in range(runs + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            outputs[name] = call()
            if round_:
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="em")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--compile-timeout", type=int, default=300)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-openvino", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="alnet-backends-") as tmp:
        calls, notes = candidates(args, Path(tmp))
        ms, outputs = round_robin(calls, args.runs)
    reference = 1 / (1 + np.exp(-outputs["torch eager fp32"]))
    print(f"{args.model}, {args.size}x{args.size}, batch 1, {args.threads} threads, OMP_WAIT_POLICY "
          f"{WAIT_POLICY or 'libgomp default'}; {_cpu()}; load average {os.getloadavg()[0]:.1f}; median of "
          f"{args.runs} round-robin rounds")
    print("| backend | ms per forward | vs eager fp32 | max abs dp | label agreement | note |\n"
          "| --- | ---: | ---: | ---: | ---: | --- |")
    base = ms["torch eager fp32"]
    for name, value in sorted(ms.items(), key=lambda kv: kv[1]):
        p = 1 / (1 + np.exp(-outputs[name].reshape(reference.shape)))
        agreement = float(((p > 0.5) == (reference > 0.5)).mean())
        print(f"| {name} | {value:.1f} | {base / value:.2f}x | {np.abs(p - reference).max():.4f} | "
              f"{agreement:.4%} | {notes.get(name, '')} |")
    for name, note in notes.items():
        if name not in ms:
            print(f"| {name} | — | — | — | — | {note} |")


if __name__ == "__main__":
    main()
