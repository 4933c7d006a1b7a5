"""How far the study's protocol moves the numbers, one choice at a time.

    python experiments/paper/protocol_effects.py [--shared ../shared] [--out FILE.md]

Starts from the standard protocol (conf/metric/standard.yaml) and switches one option at a
time to the study's choice (conf/metric/paper.yaml), on the real remote-sensing samples in
../shared/data/rs-samples, reconstructed by the real pretrained TAEF2 (a deterministic tiny
autoencoder, so its reconstructions are computed once and every row scores the same ones).

The sampling effect needs a VAE with a latent distribution. No pretrained one can be
downloaded here, so that row uses a *randomly initialised* diffusers AutoencoderKL
(tests/tiny_models.py's SD21-VAE shape): it shows the mechanism, not the size of the
effect for a trained VAE, whose posterior is far narrower.

LPIPS and FID rows need the pretrained AlexNet and InceptionV3 files (see
vaes4rs/metrics/weights.py); without them those columns and rows are left out rather than
filled with numbers from random networks.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from vaes4rs.config import DatasetConfig, MetricConfig
from vaes4rs.data import prepare
from vaes4rs.evaluate import to_minus_one_one
from vaes4rs.metrics import pixel, weights
from vaes4rs.metrics.suite import MetricSuite
from vaes4rs.models.adapter import VAEAdapter
from vaes4rs.models.taesd import load_tiny_autoencoder

REPO = Path(__file__).resolve().parents[2]
SETS = {"resisc45": "RESISC45 (24 x 256 px)", "aid150": "AID, downscaled (30 x 150 px)"}
PIXEL_METRICS = ("psnr", "ssim")


@dataclass(frozen=True)
class Effect:
    label: str
    changes: dict[str, object]
    model_dtype: torch.dtype = torch.float32
    needs: str | None = None  # a metric the row is about; skipped when its network is absent


def load_protocol(name: str) -> MetricConfig:
    yaml = OmegaConf.load(REPO / "conf" / "metric" / f"{name}.yaml")
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(MetricConfig), yaml))


def effects() -> list[Effect]:
    """Each row switches exactly one option of the standard protocol to the study's choice."""
    paper = {k: v for k, v in asdict(load_protocol("paper")).items() if k not in ("lpips", "fid", "kid")}
    return [
        Effect("standard protocol (reference row)", {}),
        Effect("SSIM on [-1,1], range 2 (value_range)", {"value_range": "minus_one_one"}),
        Effect("SSIM border: reflect-padded, all pixels (ssim_border)", {"ssim_border": "reflect"}),
        Effect("pooled per group of 64 (pool_size)", {"pool_size": 64, "bootstrap": 0}),
        Effect("no 8-bit quantisation of recon (quantize)", {"quantize": "none"}),
        Effect("ground truth cast to bf16 (gt_dtype, bf16 model)", {"gt_dtype": "model"}, torch.bfloat16),
        Effect("FID resize antialias (fid_resize)", {"fid_resize": "antialias"}, needs="fid"),
        Effect("FID uint8 by truncation (fid_quantize)", {"fid_quantize": "truncate"}, needs="fid"),
        Effect("all of the above: the paper protocol (bf16 ground truth)", paper, torch.bfloat16),
    ]


def have_weights(*keys: str) -> bool:
    return all(weights.default_path(key).is_file() for key in keys)


def reconstruct(adapter: VAEAdapter, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """All [-1, 1] originals and reconstructions of one folder (equal sizes), in dataset order."""
    cfg = DatasetConfig(name=root.name, source="folder", root=str(root), num_workers=0)
    dataset = prepare(cfg, batch_size=16, pin_memory=False)
    originals, recons = [], []
    for batch in dataset.loader:
        x = to_minus_one_one(batch["images"])
        originals.append(x)
        recons.append(adapter.reconstruct(x, [r.image_id for r in batch["records"]]))
    return torch.cat(originals), torch.cat(recons)


def score(cfg: MetricConfig, model_dtype: torch.dtype, original: torch.Tensor, recon: torch.Tensor) -> dict:
    suite = MetricSuite(cfg, torch.device("cpu"), model_dtype)
    parts = [suite.update(recon[i : i + 16], original[i : i + 16]) for i in range(0, len(original), 16)]
    table = {key: np.concatenate([part[key] for part in parts]) for key in suite.columns}
    table["height"] = np.full(len(original), original.shape[-2])
    table["width"] = np.full(len(original), original.shape[-1])
    return suite.finalize(table)


def truncation_share(original: torch.Tensor, model_dtype: torch.dtype) -> float:
    """Share of ground-truth pixel values the study's truncating uint8 cast moves off their level."""
    exact = pixel.to_uint8(original, "round")
    truncated = pixel.to_uint8(original.to(model_dtype).float(), "truncate")
    return float((exact != truncated).float().mean())


def fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def effects_table(data: dict[str, tuple[torch.Tensor, torch.Tensor]], metric_names: tuple[str, ...]) -> str:
    standard = load_protocol("standard")
    # Networks whose weights are absent are off in every row; KID says nothing on 30 images.
    switches = {"lpips": "lpips" in metric_names, "fid": "fid" in metric_names, "kid": False}
    digits = {"psnr": 2, "ssim": 4, "lpips": 4, "fid": 3}
    header = "| effect (one option switched to the study's) |"
    rule = "|---|"
    for name in data:
        for metric in metric_names:
            header += f" {metric.upper()} {name} | Δ |"
            rule += "---:|---:|"
    rows = [header, rule]
    base: dict[str, dict] = {}
    for effect in effects():
        if effect.needs and effect.needs not in metric_names:
            continue
        cfg = replace(standard, **{**effect.changes, **switches})
        row = f"| {effect.label} |"
        for name, (original, recon) in data.items():
            values = score(cfg, effect.model_dtype, original, recon)
            base.setdefault(name, values)
            for metric in metric_names:
                value, ref = values.get(metric), base[name].get(metric)
                delta = None if value is None or ref is None else value - ref
                shown = fmt(delta, digits[metric]) if effect.changes else ""
                row += f" {fmt(value, digits[metric])} | {shown} |"
        rows.append(row)
    return "\n".join(rows)


def sampling_table(data: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> str:
    """PSNR/SSIM of mode vs seeded sample through a random-init AutoencoderKL (standard metrics)."""
    sys.path.insert(0, str(REPO))
    import diffusers

    from tests.tiny_models import TINY_MODELS

    class_name, kwargs = TINY_MODELS["SD21-VAE"]
    torch.manual_seed(0)
    module = getattr(diffusers, class_name)(**kwargs).eval()
    cfg = replace(load_protocol("standard"), lpips=False, fid=False, kid=False)
    rows = [
        "| latent (random-init AutoencoderKL) | " + " | ".join(f"PSNR {n} | SSIM {n}" for n in data) + " |"
    ]
    rows.append("|---|" + "---:|---:|" * len(data))
    for latent in ("mode", "sample"):
        row = f"| {latent} |"
        for original, _ in data.values():
            adapter = VAEAdapter(module, name="random-kl", latent=latent, seed=42)
            recon = adapter.reconstruct(original)
            values = score(cfg, torch.float32, original, recon)
            row += f" {values['psnr']:.2f} | {values['ssim']:.4f} |"
        rows.append(row)
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    args = parser.parse_args()
    samples = args.shared / "data" / "rs-samples"
    model = load_tiny_autoencoder("taef2", str(args.shared / "weights" / "taef2"))
    adapter = VAEAdapter(model, name="taef2", latent="mode")
    data = {name: reconstruct(adapter, samples / name) for name in SETS}
    metric_names = PIXEL_METRICS
    if have_weights("alexnet", "lpips_alex"):
        metric_names += ("lpips",)
    if have_weights("inception"):
        metric_names += ("fid",)
    lines = [
        "Model: TAEF2 (real pretrained weights), CPU, float32. Sets: "
        + "; ".join(f"`{name}` = {label}" for name, label in SETS.items())
        + ".",
        "",
        effects_table(data, metric_names),
        "",
        "Share of ground-truth pixel values that the study's truncating uint8 cast (its FID input) "
        "moves off their 8-bit level (by one): "
        + "; ".join(
            f"{name}: {truncation_share(original, torch.float32):.1%} (float32), "
            f"{truncation_share(original, torch.bfloat16):.1%} (bf16)"
            for name, (original, _) in data.items()
        )
        + ".",
        "",
        sampling_table(data),
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
