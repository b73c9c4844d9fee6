"""What skipping costs on eager PyTorch: forward and backward through skipped
BERT-Base blocks (`TransformerEncoder`, hidden 768, ff 3072), alone.

A skipped block computes nothing; its backward gives each of its weights a
zero gradient (the gradient semantics every backend shares). This times that
in isolation: `--blocks` skipped blocks on an input of batch x 128 x 768,
inside the autocast scope the stack's blocks run in under mixed precision.

    KERAS_BACKEND=torch .venv/bin/python benchmarks/torch_skip_cost.py
    KERAS_BACKEND=torch .venv/bin/python benchmarks/torch_skip_cost.py \\
        --policy float32
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--policy", default="mixed_bfloat16",
                        help="a Keras dtype policy (default mixed_bfloat16)")
    args = parser.parse_args(argv)
    for name in ("blocks", "batch", "reps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} takes a positive int; "
                         f"got {getattr(args, name)}")
    os.environ["KERAS_BACKEND"] = "torch"
    import keras
    import keras_hub
    import numpy as np
    import torch
    from keras.src.backend import AutocastScope

    from keras_raptr.src.backend.torch import _skip

    keras.mixed_precision.set_global_policy(args.policy)
    policy = keras.mixed_precision.global_policy()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    blocks = [
        keras_hub.layers.TransformerEncoder(3072, 12)
        for _ in range(args.blocks)
    ]
    for block in blocks:
        block.build((args.batch, 128, 768))
    dtype = getattr(torch, policy.compute_dtype)
    times = []
    for _ in range(args.reps + 3):  # the first 3 are warm-up
        x = torch.randn(args.batch, 128, 768, dtype=dtype, device=device,
                        requires_grad=True)
        for block in blocks:
            for variable in block.trainable_variables:
                variable.value.grad = None
        start = time.perf_counter()
        with AutocastScope(policy.compute_dtype):
            y = x
            for block in blocks:
                y = _skip(block, y)
        y.float().sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times = np.array(times[3:]) * 1000
    weights = sum(
        int(np.prod(v.shape)) for b in blocks for v in b.trainable_variables
    )
    print(f"| skipped blocks | weights | policy | device | median ms | "
          f"min ms |\n|---|---|---|---|---|---|\n"
          f"| {args.blocks} | {weights / 1e6:.1f} M | {policy.name} | "
          f"{device} | {np.median(times):.1f} | {times.min():.1f} |")


if __name__ == "__main__":
    main()
