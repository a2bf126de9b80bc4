"""Parameters, GFLOPs and CPU latency of AL-Net, training form vs re-parameterized.

    python benchmarks/latency.py [--size 512 512] [--threads 2] [--config-json '{...}']
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from napari_alnet.model import ALNet, ALNetConfig, count_parameters


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config-json", default=None, help="an ALNetConfig as JSON (default: the shipped one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = ALNetConfig.from_json(args.config_json) if args.config_json else ALNetConfig()
    r = measure(config, tuple(args.size))
    print(f"input 1 x {config.in_channels} x {args.size[0]} x {args.size[1]}, {args.threads} CPU threads, "
          f"median of 10 after 3 warm-up runs")
    print(f"{'form':<10}{'params':>12}{'GFLOPs':>10}{'latency ms':>12}")
    print(f"{'training':<10}{r['params_training']:>12,}{r['gflops_training']:>10.2f}{r['ms_training']:>12.1f}")
    print(f"{'fused':<10}{r['params_fused']:>12,}{r['gflops_fused']:>10.2f}{r['ms_fused']:>12.1f}")


if __name__ == "__main__":
    main()
