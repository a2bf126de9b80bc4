"""The ``alnet`` command line."""

from __future__ import annotations

import argparse
import sys
import time


def _demo(args: argparse.Namespace) -> int:
    from .api import load_model
    from .inference import predict
    from .model import ALNet
    from .pretrained import shipped_models
    from .sample_data import em_like_stack

    stack, _ = em_like_stack(depth=args.slices, size=512, cells=240)
    if "em" in shipped_models():
        model, what = load_model("em", device="cpu"), "the shipped 'em' model"
    else:
        model, what = ALNet().reparameterize(), "an untrained AL-Net (no 'em' weights shipped yet)"
    start = time.perf_counter()
    probs = [predict(model, image) for image in stack]
    elapsed = time.perf_counter() - start
    fg = sum(float((p > 0.5).mean()) for p in probs) / len(probs)
    print(f"segmented a generated EM-like stack {stack.shape} with {what} in {elapsed:.2f} s "
          f"({elapsed / len(stack) * 1000:.0f} ms/slice); foreground fraction {fg:.3f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alnet", description="AL-Net segmentation for EM, fundus and dermoscopy")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="segment a generated EM-like stack with the shipped model")
    demo.add_argument("--slices", type=int, default=3)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
