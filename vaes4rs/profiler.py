"""``python -m vaes4rs.profiler``: GFLOPs, parameters and latent shapes, the study table, timings.

    python -m vaes4rs.profiler model=flux2 profile.size=[600,600]
    python -m vaes4rs.profiler profile.table=true             # the seven study models, 256 and 600
    python -m vaes4rs.profiler model=sd21 profile.measure=true  # timings; needs the weights

The counting itself (study convention, meta device) is ``vaes4rs.models.cost``; this module
holds only the command: its config, the table of the study models and measured speed.
"""

from __future__ import annotations

import csv
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import nn

from vaes4rs.catalog import STUDY_MODELS, StudyModel
from vaes4rs.config import Device, DType, ModelConfig, register_configs
from vaes4rs.device import pick_device, resolve_dtype
from vaes4rs.models.adapter import VAEAdapter
from vaes4rs.models.architecture import build_architecture
from vaes4rs.models.cost import ModelProfile, fvcore_breakdown, profile_module
from vaes4rs.models.zoo import load_vae
from vaes4rs.report.render import markdown_table

log = logging.getLogger("vaes4rs")

PROFILE_FILE = "profile.json"
TABLE_NAME = "flops_table"


@dataclass
class ProfileSettings:
    size: list[int] = field(default_factory=lambda: [256, 256])  # [H, W] of the counted input
    measure: bool = False  # time encode/decode on the device (needs weights)
    random_weights: bool = False  # measure a random-init model instead (timing only)
    batch_size: int = 1
    dtype: DType = DType.auto  # of the measured model; conf/profile.yaml follows model.dtype
    device: Device = Device.auto  # of the measured model; counting always runs on meta
    warmup: int = 3
    repeats: int = 10
    fvcore: bool = False  # add fvcore's per-module MACs (runs one real forward pass on CPU)
    table: bool = False  # profile the seven study models at table_sizes instead of model=
    table_sizes: list[list[int]] = field(default_factory=lambda: [[256, 256], [600, 600]])
    out: str = "outputs/profile"  # where the table goes


@dataclass
class ProfileConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    profile: ProfileSettings = field(default_factory=ProfileSettings)


def register_profile_config() -> None:
    """Type conf/profile.yaml by ``ProfileConfig`` (its ``profile_schema`` default): typos fail at once."""
    register_configs()
    ConfigStore.instance().store(name="profile_schema", node=ProfileConfig)
    # The run folder names what was profiled: "table" for the study table, else the model.
    OmegaConf.register_new_resolver(
        "vaes4rs.profile_label", lambda table, model: "table" if table else model, replace=True
    )


register_profile_config()


def _check_size(key: str, size: Sequence[int]) -> None:
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"{key} must be [H, W] with positive sides, got {list(size)}")


def validate(cfg: DictConfig) -> ProfileConfig:
    """Merge the composed config into the schema so a misspelt key fails before any work."""
    merged = OmegaConf.merge(OmegaConf.structured(ProfileConfig), cfg)
    profile_cfg: ProfileConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    settings = profile_cfg.profile
    _check_size("profile.size", settings.size)
    for i, size in enumerate(settings.table_sizes):
        _check_size(f"profile.table_sizes[{i}]", size)
    if settings.batch_size < 1 or settings.repeats < 1 or settings.warmup < 0:
        raise ValueError("profile.batch_size and profile.repeats must be >= 1, profile.warmup >= 0")
    return profile_cfg


# --- The table of the study models -------------------------------------------------------------


def profile_table(
    models: Sequence[StudyModel] = STUDY_MODELS, sizes: Sequence[Sequence[int]] = ((256, 256), (600, 600))
) -> list[ModelProfile]:
    """Profiles of shipped architectures at each size (each architecture built once, on meta)."""
    rows = []
    for model in models:
        meta = build_architecture(ModelConfig(name=model.name, arch=model.arch))
        rows.extend(profile_module(meta, height, width, name=model.name) for height, width in sizes)
    return rows


TABLE_COLUMNS = (
    "model",
    "height",
    "width",
    "padded",
    "gflops",
    "encode_gflops",
    "decode_gflops",
    "params",
    "params_encoder",
    "params_decoder",
    "latent_shape",
    "spatial_ratio",
    "compression_ratio",
    "flops",
    "class_name",
)


def _table_row(profile: ModelProfile) -> dict[str, Any]:
    return {
        "model": profile.model,
        "height": profile.height,
        "width": profile.width,
        "padded": f"{profile.padded_height}x{profile.padded_width}",
        "gflops": f"{profile.gflops:.2f}",
        "encode_gflops": f"{profile.encode_flops / 1e9:.2f}",
        "decode_gflops": f"{profile.decode_flops / 1e9:.2f}",
        "params": profile.params,
        "params_encoder": profile.params_encoder,
        "params_decoder": profile.params_decoder,
        "latent_shape": profile.latent_label(),
        "spatial_ratio": profile.spatial_ratio,
        "compression_ratio": f"{profile.compression_ratio:.2f}",
        "flops": profile.flops,
        "class_name": profile.class_name,
    }


def format_markdown(profiles: Sequence[ModelProfile]) -> str:
    header = [
        "Model",
        "Input",
        "Padded",
        "GFLOPs",
        "Encode",
        "Decode",
        "Params (M) enc / dec / total",
        "Latent",
        "f",
        "Input/latent values",
    ]
    rows = []
    for p in profiles:
        row = _table_row(p)
        params = f"{p.params_encoder / 1e6:.2f} / {p.params_decoder / 1e6:.2f} / {p.params / 1e6:.2f}"
        rows.append(
            [
                p.model,
                f"{p.height}x{p.width}",
                row["padded"],
                row["gflops"],
                row["encode_gflops"],
                row["decode_gflops"],
                params,
                row["latent_shape"],
                str(p.spatial_ratio),
                row["compression_ratio"],
            ]
        )
    lines = [
        "One encode+decode of a 1x3xHxW input: 2 FLOPs per multiply-add, attention matmuls counted, "
        "norms and element-wise ops not (the study's convention); counted on the meta device.",
        "",
        *markdown_table(header, "lllrrrllrr", rows),
    ]
    return "\n".join(lines) + "\n"


def write_table(profiles: Sequence[ModelProfile], out_dir: Path) -> tuple[Path, Path]:
    """``flops_table.md`` (for reading) and ``flops_table.csv`` (for reports) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, csv_path = out_dir / f"{TABLE_NAME}.md", out_dir / f"{TABLE_NAME}.csv"
    md_path.write_text(format_markdown(profiles))
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows(_table_row(p) for p in profiles)
    return md_path, csv_path


# --- Measured speed ------------------------------------------------------------------------------


def _median_ms(step: Callable[[], torch.Tensor], device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


@torch.inference_mode()
def measure_speed(
    module: nn.Module, height: int, width: int, batch_size: int = 1, warmup: int = 3, repeats: int = 10
) -> dict[str, Any]:
    """Median encode and decode time per image, throughput and peak memory on the module's device."""
    adapter = VAEAdapter(module, name=type(module).__name__, latent="mode")
    device, dtype = adapter.device, adapter.dtype
    x, _ = adapter.pad(torch.rand(batch_size, 3, height, width, device=device, dtype=dtype) * 2 - 1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    z = adapter.encode(x)
    encode_ms = _median_ms(lambda: adapter.encode(x), device, warmup, repeats) / batch_size
    decode_ms = _median_ms(lambda: adapter.decode(z), device, warmup, repeats) / batch_size
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else "n/a"
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "batch_size": batch_size,
        "height": height,
        "width": width,
        "encode_ms_per_image": round(encode_ms, 3),
        "decode_ms_per_image": round(decode_ms, 3),
        "images_per_s": round(1e3 / (encode_ms + decode_ms), 2),
        "peak_memory_mib": round(peak, 1) if isinstance(peak, float) else peak,
    }


def _measure(cfg: ProfileConfig) -> dict[str, Any]:
    settings = cfg.profile
    device = pick_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    if settings.random_weights:
        module = build_architecture(cfg.model, device).to(dtype)
    else:
        module = load_vae(cfg.model, device, dtype)
    result = measure_speed(module, *settings.size, settings.batch_size, settings.warmup, settings.repeats)
    result["weights"] = "RANDOM INIT (timing only)" if settings.random_weights else "pretrained"
    return result


# --- CLI -------------------------------------------------------------------------------------------


def run_profile(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Everything the CLI does, callable on a composed config (tests call it directly)."""
    profile_cfg = validate(cfg)
    settings = profile_cfg.profile
    if settings.table:
        start = time.perf_counter()
        profiles = profile_table(STUDY_MODELS, settings.table_sizes)
        elapsed = time.perf_counter() - start
        md_path, csv_path = write_table(profiles, Path(settings.out))
        print(format_markdown(profiles))
        print(
            f"profiled {len(STUDY_MODELS)} models x {len(settings.table_sizes)} sizes in {elapsed:.1f} s "
            f"-> {md_path}, {csv_path}"
        )
        return {"table": [p.as_dict() for p in profiles], "seconds": elapsed}
    meta = build_architecture(profile_cfg.model)
    profile = profile_module(meta, *settings.size, name=profile_cfg.model.name)
    payload: dict[str, Any] = {"profile": profile.as_dict()}
    print(
        f"{profile.model} ({profile.class_name}) at {profile.height}x{profile.width}"
        f" (padded {profile.padded_height}x{profile.padded_width}): {profile.gflops:.2f} GFLOPs"
        f" (encode {profile.encode_flops / 1e9:.2f}, decode {profile.decode_flops / 1e9:.2f}),"
        f" params {profile.params:,}"
        f" (encoder {profile.params_encoder:,}, decoder {profile.params_decoder:,}),"
        f" latent {profile.latent_label()}, f{profile.spatial_ratio},"
        f" compression {profile.compression_ratio:.2f}x"
    )
    if settings.fvcore:
        payload["fvcore"] = fvcore_breakdown(meta, *settings.size)
        for part, macs in payload["fvcore"]["macs_by_module"].items():
            print(f"  fvcore {part}: {macs / 1e9:.2f} GMACs")
        print(f"  fvcore 2 x MACs without norms/upsampling: {payload['fvcore']['study_gflops']:.2f} GFLOPs")
    if settings.measure:
        payload["measure"] = _measure(profile_cfg)
        print("  measured: " + ", ".join(f"{k}={v}" for k, v in payload["measure"].items()))
    path = out_dir / PROFILE_FILE
    path.write_text(json.dumps(payload, indent=2) + "\n")
    log.info("wrote %s", path)
    return payload


@hydra.main(version_base="1.3", config_path="../conf", config_name="profile")
def main(cfg: DictConfig) -> None:
    run_profile(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
