"""Parameters, GFLOPs and CPU latency of AL-Net: training form vs re-parameterized, per precision and backend,
next to the classic U-Net measured in the same run.

    python benchmarks/latency.py [--size 512 512] [--threads 2] [--config-json '{...}'] [--precisions fp32 bf16]
                                 [--batches 1 4] [--backends torch onnxruntime openvino] [--runs 10] [--no-unet]
                                 [--clock wall|cpu] [--no-forms] [--predict [--model em] [--json]]

OpenMP waits as the engine's: ``engine.threads.prepare_for("segment")`` runs before torch is imported (libgomp's
bounded spin, what ``alnet segment`` uses; an ``OMP_WAIT_POLICY`` in the environment wins), and ONNX Runtime
sessions are made as the engine makes them.

``--predict``: issue 27's table side by side in one round-robin — ``Segmenter.predict`` of one 512² slice (an ISBI
test slice where ../shared/data is there) with ``auto`` (and what it picked), fp32, bf16 (where native and
validated) and int8, the network alone in fp32 (torch) and int8 (ONNX Runtime) on the prepared input, and the
classic U-Net: ms, the ratio to the U-Net, and the wrapper's overhead (predict over its network alone).
``--json``: the figures as one JSON object (``predict_figures``; ``benchmarks/speed_table.py`` imports it).

The second table times the fused network as the engine runs it (channels-last, inference mode, bf16 through
autocast), one forward pass of ``batch`` slices, per slice, and the classic U-Net of Ronneberger et al. (2015:
widths 64-1024, two 3x3 conv + ReLU per level, 2x2 max-pool down, 2x2 up-convolution, "same" padding so a 512²
input works) in fp32. All candidates are timed round-robin (one call each per round), so drifting load on a
shared machine hits them alike; "vs U-Net" is the U-Net's median over the candidate's. bf16 is marked
"emulated" where the CPU has no native bf16 (``devices.cpu_bf16_support``): figures there say nothing about a CPU
that has it. ``onnxruntime``/``openvino`` (optional, measured only when installed; not used by the engine) run an
ONNX export of the fused network in fp32 with ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from napari_alnet.engine.threads import prepare_for

WAIT_POLICY = prepare_for("segment")  # before torch loads libgomp, as the alnet program does

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from napari_alnet import load_model  # noqa: E402
from napari_alnet.engine.devices import cpu_bf16_support  # noqa: E402
from napari_alnet.engine.inference import prepare_whole  # noqa: E402
from napari_alnet.engine.quantized import session_options  # noqa: E402
from napari_alnet.io.sample_data import em_like_stack  # noqa: E402
from napari_alnet.io.stack_reader import read_image  # noqa: E402
from napari_alnet.model import ALNet, ALNetConfig, count_parameters  # noqa: E402

ISBI_SLICE = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012" / "train" / "images" / "25.png"


class ClassicUNet(nn.Module):
    """Ronneberger et al. (2015): 4 poolings, widths 64-1024, two 3x3 conv + ReLU per level, 2x2 up-convolutions,
    skip concatenation, a 1x1 classifier ("same" padding instead of the paper's valid convolutions)."""

    def __init__(self, in_channels: int = 1, classes: int = 1, widths=(64, 128, 256, 512, 1024)) -> None:
        super().__init__()

        def double(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))

        self.down = nn.ModuleList([double(in_channels, widths[0])]
                                  + [double(a, b) for a, b in itertools.pairwise(widths)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in itertools.pairwise(widths)])
        self.merge = nn.ModuleList([double(2 * a, a) for a in widths[:-1]])
        self.classify = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, level in enumerate(self.down):
            x = level(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, merge in zip(reversed(self.up), reversed(self.merge), strict=True):
            x = merge(torch.cat([skips.pop(), up(x)], 1))
        return self.classify(x)


def count_gflops(model: nn.Module, x: torch.Tensor) -> float:
    """Multiply-accumulates of conv layers x 2, in GFLOPs (other layers are negligible)."""
    total = 0

    def hook(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.inference_mode():
        model(x)
    for h in handles:
        h.remove()
    return 2 * total / 1e9


def median_latency_ms(model: nn.Module, x: torch.Tensor, warmup: int = 3, runs: int = 10) -> float:
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def measure(config: ALNetConfig, size: tuple[int, int], channels_last: bool = True) -> dict[str, float]:
    """Figures for one config: params, GFLOPs and latency, training form and fused."""
    x = torch.randn(1, config.in_channels, *size)
    model = ALNet(config).eval()
    out = {"params_training": count_parameters(model), "gflops_training": count_gflops(model, x)}
    out["ms_training"] = median_latency_ms(model, x)
    model.reparameterize()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    out.update(params_fused=count_parameters(model), gflops_fused=count_gflops(model, x),
               ms_fused=median_latency_ms(model, x))
    return out


#: Seconds between two candidates' calls: ONNX Runtime's and libgomp's idle threads spin for a while after a call
#: (where not told to sleep), and a torch call right after an ONNX Runtime one shared the cores with them (idle,
#: the same bf16 predict measured 69 ms after int8's call and 30 ms after fp32's).
PAUSE = 0.05


def round_robin(candidates: dict[str, Callable[[], object]], runs: int, warmup: int = 2,
                limits: dict[str, int] | None = None,
                clock: Callable[[], float] = time.perf_counter, pause: float = PAUSE) -> dict[str, float]:
    """Median ms per call of each candidate, timed one call each per round (``limits``: fewer runs for some), with
    ``pause`` seconds before each call; ``clock``: wall time, or ``time.process_time`` (CPU time of the process:
    robust to other load at 1 thread)."""
    limits = limits or {}
    for name, call in candidates.items():
        for _ in range(min(warmup, limits.get(name, warmup))):
            call()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for round_ in range(runs):
        for name, call in candidates.items():
            if round_ < limits.get(name, runs):
                time.sleep(pause)
                start = clock()
                call()
                times[name].append(clock() - start)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def torch_call(model: nn.Module, x: torch.Tensor, precision: str) -> Callable[[], object]:
    def call():
        with torch.inference_mode():
            autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                        else contextlib.nullcontext())
            with autocast:
                return model(x)
    return call


def onnx_calls(model: ALNet, x: torch.Tensor, threads: int, backends: list[str]) -> dict[str, Callable[[], object]]:
    """fp32 calls of an ONNX export of ``model`` on each installed backend of ``backends``."""
    calls: dict[str, Callable[[], object]] = {}
    path = Path(tempfile.mkdtemp(prefix="alnet-onnx-")) / "alnet.onnx"
    plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    torch.onnx.export(plain, (x.contiguous(),), str(path), input_names=["x"], output_names=["logits"],
                      opset_version=17, dynamo=False)
    data = np.ascontiguousarray(x.numpy())
    if "onnxruntime" in backends:
        with contextlib.suppress(ImportError):
            import onnxruntime as ort

            session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
            calls["onnxruntime"] = lambda: session.run(None, {"x": data})
    if "openvino" in backends:
        with contextlib.suppress(ImportError):
            import openvino as ov

            compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                                  "INFERENCE_PRECISION_HINT": "f32",
                                                                  "PERFORMANCE_HINT": "LATENCY"})
            request = compiled.create_infer_request()
            calls["openvino"] = lambda: request.infer({0: data})
    return calls


def comparison(config: ALNetConfig, size: tuple[int, int], args: argparse.Namespace) -> None:
    """The second table: fused AL-Net per precision, batch and backend, and the classic U-Net, round-robin."""
    model = ALNet(config).eval().reparameterize().to(memory_format=torch.channels_last)
    rows, candidates, limits = {}, {}, {}
    gflops = count_gflops(model, torch.randn(1, config.in_channels, *size))
    for batch in args.batches:
        x = torch.randn(batch, config.in_channels, *size).contiguous(memory_format=torch.channels_last)
        for precision in args.precisions:
            key = f"AL-Net fused | {precision} | torch | {batch}"
            candidates[key], rows[key] = torch_call(model, x, precision), (count_parameters(model), gflops, batch)
        if batch == 1 and set(args.backends) - {"torch"}:
            for backend, call in onnx_calls(model, x, args.threads, args.backends).items():
                key = f"AL-Net fused | fp32 | {backend} | 1"
                candidates[key], rows[key] = call, (count_parameters(model), gflops, 1)
    if not args.no_unet:
        unet = ClassicUNet(config.in_channels).eval().to(memory_format=torch.channels_last)
        x = torch.randn(1, config.in_channels, *size).contiguous(memory_format=torch.channels_last)
        key = "classic U-Net | fp32 | torch | 1"
        candidates[key], rows[key] = torch_call(unet, x, "fp32"), (count_parameters(unet),
                                                                  count_gflops(unet, x), 1)
        limits[key] = max(3, args.runs // 3)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    ms = round_robin(candidates, args.runs, limits=limits, clock=clock)
    unet_ms = next((v for k, v in ms.items() if k.startswith("classic")), None)
    unet_runs = max(limits.values()) if limits else 0
    print(f"\n{args.threads} threads, {args.clock} time, round-robin, median of {args.runs} rounds (U-Net: "
          f"{unet_runs}); bf16 here"
          f": {'native' if cpu_bf16_support().native else 'EMULATED'} ({cpu_bf16_support().reason})")
    print("| network | precision | backend | batch | params | GFLOPs / slice | ms / slice | vs U-Net |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for key, (params, flops, batch) in rows.items():
        per = ms[key] / batch
        ratio = f"{unet_ms / per:.1f}x" if unet_ms else "—"
        print(f"| {key} | {params / 1e6:.2f} M | {flops:.1f} | {per:.1f} | {ratio} |")


UNET = "classic U-Net, fp32 (torch)"


def predict_candidates(model_name: str, size: tuple[int, int]) -> tuple[dict[str, Callable[[], object]], dict]:
    """``--predict``'s candidates: predict in auto/fp32/bf16 (where native)/int8 and the networks alone on the
    prepared input; and what was run (``what``, ``auto``: the precision it picked, ``validated``: the card's)."""
    from napari_alnet.engine.devices import validated_in_card

    auto = load_model(model_name, device="cpu")
    fp32 = auto.with_precision("fp32")
    image = read_image(ISBI_SLICE) if ISBI_SLICE.is_file() else em_like_stack(depth=1, size=max(size))[0][0]
    image = image[: size[0], : size[1]]
    prepared = prepare_whole(fp32, image[None]).x
    x = torch.from_numpy(prepared)
    calls = {f"predict, auto ({auto.precision})": lambda: auto.predict(image),
             "predict, fp32": lambda: fp32.predict(image),
             "network alone, fp32 (torch)": torch_call(fp32.network, x.contiguous(memory_format=torch.channels_last),
                                                       "fp32")}
    validated = [p for p in ("bf16", "int8") if validated_in_card(auto.metadata.card, p)]
    if cpu_bf16_support().native and "bf16" in validated:
        bf16 = fp32.with_precision("bf16")
        calls["predict, bf16"] = lambda: bf16.predict(image)
    if fp32.int8_graph is not None:
        int8 = fp32.with_precision("int8")
        runner = int8.runner
        calls["predict, int8"] = lambda: int8.predict(image)
        calls["network alone, int8 (onnxruntime)"] = lambda: runner(x)
    source = f"ISBI 2012 slice 25 ({image.shape[0]}x{image.shape[1]})" if ISBI_SLICE.is_file() else "EM-like sample"
    return calls, {"what": f"{model_name} model, {source}; {auto.precision_choice.reason}", "auto": auto.precision,
                   "validated": ["fp32", *validated]}


def predict_figures(model_name: str, size: tuple[int, int], *, runs: int, clock: str = "wall") -> dict:
    """Issue 27's predict figures, round-robin with the classic U-Net: median ms per candidate (``ms``) and what
    ran (see ``predict_candidates``)."""
    calls, info = predict_candidates(model_name, size)
    unet = ClassicUNet(1).eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, 1, *size).contiguous(memory_format=torch.channels_last)
    calls[UNET] = torch_call(unet, x, "fp32")
    timer = time.process_time if clock == "cpu" else time.perf_counter
    ms = round_robin(calls, runs, limits={UNET: max(3, runs // 3)}, clock=timer)
    return info | {"ms": ms, "runs": runs, "clock": clock, "threads": torch.get_num_threads(),
                   "wait_policy": WAIT_POLICY or "default (bounded spin)"}


def predict_table(args: argparse.Namespace) -> None:
    """Issue 27's table: predict per precision, the networks alone and the classic U-Net, round-robin."""
    figures = predict_figures(args.model, tuple(args.size), runs=args.runs, clock=args.clock)
    if args.json:
        print(json.dumps(figures))
        return
    ms = figures["ms"]
    unet_ms = ms[UNET]
    alone = {"fp32": ms["network alone, fp32 (torch)"], "int8": ms.get("network alone, int8 (onnxruntime)")}
    print(f"\n{figures['what']}\n{args.threads} threads, OMP_WAIT_POLICY {figures['wait_policy']}, "
          f"{args.clock} time, round-robin, median of {args.runs} rounds")
    print("| what | ms | vs U-Net | over its network alone |\n| --- | ---: | ---: | ---: |")
    for key, value in ms.items():
        precision = key.split("(")[-1].rstrip(")") if key.startswith("predict, auto") else key.split(", ")[-1]
        base = alone.get(precision) if key.startswith("predict") else None
        over = f"{(value / base - 1) * 100:+.0f} %" if base else "—"
        print(f"| {key} | {value:.1f} | {unet_ms / value:.1f}x | {over} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config-json", default=None, help="an ALNetConfig as JSON (default: the shipped one)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1])
    parser.add_argument("--backends", nargs="+", default=["torch"], choices=["torch", "onnxruntime", "openvino"])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--no-unet", action="store_true", help="skip the classic U-Net reference")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: process CPU time (use with --threads 1 on a loaded machine)")
    parser.add_argument("--no-forms", action="store_true", help="skip the training-vs-fused table")
    parser.add_argument("--predict", action="store_true", help="only issue 27's predict table (see above)")
    parser.add_argument("--model", default="em", help="--predict: the shipped model (default em)")
    parser.add_argument("--json", action="store_true", help="--predict: one JSON object instead of the table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.predict:
        predict_table(args)
        return
    config = ALNetConfig.from_json(args.config_json) if args.config_json else ALNetConfig()
    if not args.no_forms:
        r = measure(config, tuple(args.size))
        print(f"input 1 x {config.in_channels} x {args.size[0]} x {args.size[1]}, {args.threads} CPU threads, "
              f"median of 10 after 3 warm-up runs")
        print(f"{'form':<10}{'params':>12}{'GFLOPs':>10}{'latency ms':>12}")
        print(f"{'training':<10}{r['params_training']:>12,}{r['gflops_training']:>10.2f}{r['ms_training']:>12.1f}")
        print(f"{'fused':<10}{r['params_fused']:>12,}{r['gflops_fused']:>10.2f}{r['ms_fused']:>12.1f}")
    comparison(config, tuple(args.size), args)


if __name__ == "__main__":
    main()
