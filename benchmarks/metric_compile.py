"""``python -m benchmarks.metric_compile``: what torch.compile does to the metric networks.

    TORCH_HOME=<weights> python -m benchmarks.metric_compile --images ../shared/data/rs-samples/resisc45

For LPIPS-AlexNet and FID's InceptionV3 (the paper protocol's networks), on one batch of the
images: eager time per batch (median of 3 after a warm-up), the first compiled call (the
compilation), compiled time per batch, and how far the compiled outputs move from eager (max
absolute difference, and relative to the largest output). ``run.compile=true`` compiles them
this way (``vaes4rs.metrics.suite.compile_networks``). Networks come from the metric weight
files under ``TORCH_HOME`` (random planted ones do for timing; the differences are those of
whatever weights are there).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vaes4rs.metrics import fid, perceptual
from vaes4rs.metrics.suite import compile_networks


def load_batch(root: Path, n: int, device: torch.device) -> torch.Tensor:
    """The first ``n`` images under ``root`` (sorted), uint8 (n, 3, H, W); they must share a size."""
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".tif"})[:n]
    images = [np.array(Image.open(path).convert("RGB")) for path in paths]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(device)


def seconds(
    network: Callable[..., torch.Tensor], inputs: tuple, device: torch.device, repeats: int = 3
) -> float:
    """Median seconds of ``network(*inputs)``."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        network(*inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--n", type=int, default=8, help="images in the batch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="inductor")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    images = load_batch(args.images, args.n, device)
    unit = images.float() / 127.5 - 1  # [-1, 1], as the suite gives LPIPS
    shifted = (unit + 0.05).clamp(-1, 1)
    networks = {
        "InceptionV3 (FID)": (fid.load_inception({}, "antialias", device), (images,)),
        "LPIPS-AlexNet": (perceptual.load_lpips_alex({}, device), (unit, shifted)),
    }
    size = tuple(images.shape[-2:])
    print(f"{len(images)} images of {size} from {args.images}, {device}, backend {args.backend}")
    with torch.no_grad():
        for name, (network, inputs) in networks.items():
            network.eval()
            eager = network(*inputs)
            eager_s = seconds(network, inputs, device)
            compile_networks({name: network}, args.backend)
            start = time.perf_counter()
            compiled = network(*inputs)
            first_s = time.perf_counter() - start
            compiled_s = seconds(network, inputs, device)
            difference = (compiled - eager).abs().max().item()
            relative = difference / eager.abs().max().item()
            print(
                f"{name}: eager {eager_s:.3f} s/batch, first compiled call {first_s:.1f} s, compiled "
                f"{compiled_s:.3f} s/batch (x{eager_s / compiled_s:.2f}); max |compiled - eager| "
                f"{difference:.2e} ({relative:.2e} of the largest output)"
            )


if __name__ == "__main__":
    main()
