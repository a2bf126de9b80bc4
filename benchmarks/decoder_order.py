"""The A-Decoder's two evaluation orders, side by side: the paper's (upsample the 128-channel context to the Flow
grid, then its 1x1 conv, add, classify) and ours (the 1x1 convs and the classifier's weights first, on the
stride-32 grid, so only num_classes channels are upsampled). Same function up to float rounding.

    python benchmarks/decoder_order.py [--size 512 512] [--threads 1] [--clock cpu|wall] [--runs 15] [--model em]

Round-robin (one call of each order per round), median per order; ``--clock cpu`` times process CPU (use it with
``--threads 1`` on a loaded machine).
"""

from __future__ import annotations

import argparse
import time

import torch

from latency import round_robin
from napari_alnet import load_model
from napari_alnet.model import ALNet


def call(net: ALNet, x: torch.Tensor, paper: bool):
    def run():
        net.decoder.training = paper  # the ADecoder's flag only: every BatchNorm is folded or in eval mode
        try:
            with torch.inference_mode():
                return net(x)
        finally:
            net.decoder.training = False
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--model", default="em")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net = load_model(args.model, device="cpu", precision="fp32").network
    x = torch.randn(1, net.config.in_channels, *args.size).contiguous(memory_format=torch.channels_last)
    diff = (call(net, x, True)() - call(net, x, False)()).abs().max().item()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    ms = round_robin({"paper order": call(net, x, True), "reordered (shipped)": call(net, x, False)}, args.runs,
                     clock=clock)
    print(f"{args.model}, 1 x {net.config.in_channels} x {args.size[0]} x {args.size[1]}, {args.threads} thread(s), "
          f"{args.clock} time, median of {args.runs} round-robin rounds; max |Δlogit| {diff:.1e}")
    print("| A-Decoder order | ms | vs paper order |\n| --- | ---: | ---: |")
    for name, value in ms.items():
        print(f"| {name} | {value:.1f} | {value / ms['paper order'] - 1:+.1%} |")


if __name__ == "__main__":
    main()
