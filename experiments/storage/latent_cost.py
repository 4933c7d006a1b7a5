"""What a stored latent costs per pixel, from each architecture alone (no weights, no images).

    python experiments/storage/latent_cost.py

For the study's seven VAEs and TAEF2: the latent shape of a 256x256 and a 600x600 image
(padded to the model's multiple as vaes4rs pads it), and the payload bits per source pixel
for each latent dtype. uint8 adds its per-channel offset and scale (two float32 per channel
per image). Shard headers and lossless coding (zstd) come on top or off: only an export
measures those (``python -m vaes4rs.encode``).
"""

from __future__ import annotations

import math

from vaes4rs.catalog import STUDY_MODELS
from vaes4rs.config import ModelConfig, ModelLoader
from vaes4rs.models.architecture import build_architecture
from vaes4rs.models.cost import profile_module

BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "uint8": 1}
SIZES = ((256, 256), (600, 600))


def payload_bpp(shape: tuple[int, ...], dtype: str, pixels: int) -> float:
    """Bits per source pixel of one latent of ``shape`` stored as ``dtype``."""
    extra = 2 * 4 * shape[0] if dtype == "uint8" else 0  # offset and scale per channel
    return 8 * (math.prod(shape) * BYTES[dtype] + extra) / pixels


def main() -> None:
    configs = [ModelConfig(name=m.label, arch=m.arch) for m in STUDY_MODELS]
    configs.append(ModelConfig(name="TAEF2", loader=ModelLoader.tiny, variant="taef2"))
    header = ["model", "size", "latent (C, h, w)", *(f"{dtype} bpp" for dtype in BYTES)]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for cfg in configs:
        meta = build_architecture(cfg)
        for height, width in SIZES:
            shape = profile_module(meta, height, width, name=cfg.name).latent_shape
            cells = [f"{payload_bpp(shape, dtype, height * width):.3f}" for dtype in BYTES]
            print(f"| {cfg.name} | {height}x{width} | {tuple(shape)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
