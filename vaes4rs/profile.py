"""``python -m vaes4rs.profile``: GFLOPs, parameters and latent shapes in the study's convention.

    python -m vaes4rs.profile model=flux2 profile.size=[600,600]
    python -m vaes4rs.profile profile.table=true             # the seven study models, 256 and 600
    python -m vaes4rs.profile model=sd21 profile.measure=true  # timings; needs the weights

GFLOPs = FLOPs of one encode+decode of a 1x3xHxW input through ``VAEAdapter`` (padding, the
5-D Qwen input and all), 2 FLOPs per multiply-add, attention matmuls counted, norms and
element-wise ops not. Counted by ``torch.utils.flop_counter.FlopCounterMode`` on the ``meta``
device, with the architecture rebuilt from its config: no weights, no arithmetic, the same
answer on any machine. Counting real CPU tensors would silently drop attention (CPU attention
kernels have no FLOP formula: 890.61 instead of 894.91 GFLOPs for SD2.1).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vaes4rs.config import DEVICES, DTYPES, MODEL_LOADERS, ModelConfig, register_configs
from vaes4rs.models import zoo
from vaes4rs.models.adapter import VAEAdapter, family_of, latent_shape_of, spatial_multiple

log = logging.getLogger("vaes4rs")

# The study's models in the order of its table; each is also a shipped architecture config.
STUDY_MODELS = ("sd21", "sdxl", "sd35", "flux1", "flux2", "sana", "qwen")
PROFILE_FILE = "profile.json"
TABLE_NAME = "flops_table"
# Ops fvcore counts that the study's convention does not (norms, resampling, pooling).
FVCORE_EXTRA_OPS = frozenset(
    {
        "batch_norm",
        "group_norm",
        "layer_norm",
        "instance_norm",
        "upsample_nearest2d",
        "upsample_bilinear2d",
        "adaptive_avg_pool2d",
        "grid_sampler",
    }
)


@dataclass
class ProfileSettings:
    size: list[int] = field(default_factory=lambda: [256, 256])  # [H, W] of the counted input
    measure: bool = False  # time encode/decode on the device (needs weights)
    random_weights: bool = False  # measure a random-init model instead (timing only)
    batch_size: int = 1
    dtype: str = "auto"  # of the measured model; conf/profile.yaml follows model.dtype
    device: str = "auto"  # of the measured model; counting always runs on meta
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


register_profile_config()


def _check_size(key: str, size: Sequence[int]) -> None:
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"{key} must be [H, W] with positive sides, got {list(size)}")


def validate(cfg: DictConfig) -> ProfileConfig:
    """Merge the composed config into the schema so a misspelt key fails before any work."""
    merged = OmegaConf.merge(OmegaConf.structured(ProfileConfig), cfg)
    profile_cfg: ProfileConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    settings, model = profile_cfg.profile, profile_cfg.model
    for key, value, choices in (
        ("model.loader", model.loader, MODEL_LOADERS),
        ("profile.dtype", settings.dtype, DTYPES),
        ("profile.device", settings.device, DEVICES),
    ):
        if value not in choices:
            raise ValueError(f"{key}={value!r} is not valid; choose one of {', '.join(choices)}")
    _check_size("profile.size", settings.size)
    for i, size in enumerate(settings.table_sizes):
        _check_size(f"profile.table_sizes[{i}]", size)
    if settings.batch_size < 1 or settings.repeats < 1 or settings.warmup < 0:
        raise ValueError("profile.batch_size and profile.repeats must be >= 1, profile.warmup >= 0")
    return profile_cfg


# --- Building architectures without weights -------------------------------------------------


def build_architecture(cfg: ModelConfig, device: torch.device | str = "meta") -> nn.Module:
    """The configured model's architecture, random-init on ``device`` (meta: no memory at all).

    Shipped study architectures come from ``model.arch``; any other diffusers VAE from its own
    config.json (local folder or hub, no weights); the tiny autoencoders from ``model.variant``.
    """
    if cfg.loader == "tiny":
        from vaes4rs.models.taesd import TinyAutoencoder

        if cfg.variant is None:
            raise ValueError(f"model '{cfg.name}': model.variant must name the tiny autoencoder")
        with torch.device(device):
            return TinyAutoencoder(cfg.variant).eval()
    if cfg.arch is not None:
        config = zoo.architecture_config(cfg.arch)
    elif cfg.path or cfg.repo:
        try:
            config = zoo.read_model_config(cfg)
        except OSError as exc:  # not on disk, not in the hub cache, hub unreachable
            raise RuntimeError(
                f"model '{cfg.name}': counting needs its config.json (not its weights) and it cannot be "
                f"read ({type(exc).__name__}: {exc}); download it, pass model.path=<dir>, or "
                f"model.arch=<one of {zoo.shipped_architectures()}>"
            ) from exc
    else:
        raise ValueError(f"model '{cfg.name}': set model.arch, model.path or model.repo")
    with torch.device(device):
        return zoo.build_from_config(config).eval()


def meta_copy(module: nn.Module) -> nn.Module:
    """The same architecture as an already-built model, on the meta device (its weights untouched)."""
    family = family_of(module)
    with torch.device("meta"):
        if family == "tiny01":  # our TAESD-family module: the variant names the architecture
            copy = type(module)(module.variant)
        else:
            copy = type(module).from_config(module.config)
    return copy.eval()


def _as_meta(module: nn.Module) -> nn.Module:
    """The module itself when it is on meta already, else its meta copy."""
    return module if next(module.parameters()).device.type == "meta" else meta_copy(module)


# --- Counting ---------------------------------------------------------------------------------


class _Stages(nn.Module):
    """Adapter stages run as one module call, so counters name the VAE's parts ``vae.<child>``."""

    def __init__(self, adapter: VAEAdapter, stages: Sequence[str]) -> None:
        super().__init__()
        self.vae = adapter.module
        self._steps: list[Callable[[torch.Tensor], torch.Tensor]] = [getattr(adapter, s) for s in stages]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self._steps:
            x = step(x)
        return x


@dataclass
class _StageCount:
    output: torch.Tensor
    flops: int
    flops_by_part: dict[str, int]  # top-level child of the VAE -> FLOPs
    parts: set[str]  # top-level children called (which parameters belong to this stage)


def _count_stage(adapter: VAEAdapter, stage: str, x: torch.Tensor) -> _StageCount:
    wrapper = _Stages(adapter, [stage])
    called: set[str] = set()
    hooks = [
        child.register_forward_pre_hook(lambda *_, name=name: called.add(name))
        for name, child in adapter.module.named_children()
    ]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            output = wrapper(x)
    finally:
        for hook in hooks:
            hook.remove()
    prefix = f"{type(wrapper).__name__}.vae."
    by_part = {
        key.removeprefix(prefix): sum(ops.values())
        for key, ops in counter.get_flop_counts().items()
        if key.startswith(prefix) and "." not in key.removeprefix(prefix)
    }
    return _StageCount(output, counter.get_total_flops(), by_part, called)


@dataclass
class ModelProfile:
    """Cost and shape facts of one model at one input size (FLOPs in the study's convention)."""

    model: str
    class_name: str
    height: int
    width: int
    padded_height: int
    padded_width: int
    flops: int
    encode_flops: int
    decode_flops: int
    flops_by_module: dict[str, int]
    params: int
    params_encoder: int
    params_decoder: int
    latent_shape: tuple[int, ...]  # (C, h, w); Qwen's frame axis of 1 dropped

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def spatial_ratio(self) -> int:
        """Downsampling factor per side (padded input side / latent side)."""
        return self.padded_height // self.latent_shape[-2]

    @property
    def compression_ratio(self) -> float:
        """Input values / latent values, with the unpadded input (what storing latents saves)."""
        return 3 * self.height * self.width / math.prod(self.latent_shape)

    def latent_label(self) -> str:
        return "(" + ",".join(map(str, self.latent_shape)) + ")"

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "latent_shape": list(self.latent_shape),
            "gflops": round(self.gflops, 4),
            "encode_gflops": round(self.encode_flops / 1e9, 4),
            "decode_gflops": round(self.decode_flops / 1e9, 4),
            "spatial_ratio": self.spatial_ratio,
            "compression_ratio": round(self.compression_ratio, 4),
        }


def profile_module(module: nn.Module, height: int, width: int, name: str | None = None) -> ModelProfile:
    """Count one encode+decode of a 1x3xHxW input; a model with weights is first rebuilt on meta."""
    meta = _as_meta(module)
    # The mode latent needs no RNG; sampling would only add element-wise ops, which are not counted.
    adapter = VAEAdapter(meta, name=name or type(meta).__name__, latent="mode")
    x, _ = adapter.pad(torch.empty(1, 3, height, width, device="meta", dtype=adapter.dtype))
    encoded = _count_stage(adapter, "encode", x)
    decoded = _count_stage(adapter, "decode", encoded.output)
    if tuple(decoded.output.shape) != tuple(x.shape):
        raise RuntimeError(
            f"{adapter.name}: decode gave {tuple(decoded.output.shape)} for input {tuple(x.shape)}"
        )

    def params_of(parts: Iterable[str]) -> int:
        return sum(p.numel() for part in parts for p in getattr(meta, part).parameters())

    by_module = dict(encoded.flops_by_part)
    for part, flops in decoded.flops_by_part.items():
        by_module[part] = by_module.get(part, 0) + flops
    return ModelProfile(
        model=adapter.name,
        class_name=type(meta).__name__,
        height=height,
        width=width,
        padded_height=x.shape[-2],
        padded_width=x.shape[-1],
        flops=encoded.flops + decoded.flops,
        encode_flops=encoded.flops,
        decode_flops=decoded.flops,
        flops_by_module=by_module,
        params=sum(p.numel() for p in meta.parameters()),
        params_encoder=params_of(encoded.parts),
        params_decoder=params_of(decoded.parts),
        latent_shape=latent_shape_of(encoded.output),
    )


def count_gflops(module: nn.Module, height: int, width: int) -> float:
    """GFLOPs of one encode+decode at HxW, for any supported model (loaded or meta) in the study's way."""
    return profile_module(module, height, width).gflops


def model_summary(module: nn.Module) -> dict[str, Any]:
    """Class and parameter counts (encoder side, decoder side, total) of a supported model."""
    meta = _as_meta(module)
    multiple = spatial_multiple(meta)
    # A small input (latent 4x4, so no norm sees a single value): parameters do not depend on it.
    profile = profile_module(meta, 4 * multiple, 4 * multiple)
    return {
        "class": profile.class_name,
        "params": profile.params,
        "params_encoder": profile.params_encoder,
        "params_decoder": profile.params_decoder,
    }


def fvcore_breakdown(module: nn.Module, height: int, width: int) -> dict[str, Any]:
    """fvcore's count of one encode+decode: MACs per top-level module and per operator.

    The independent cross-check of ``profile_module``: fvcore counts 1 per multiply-add and adds
    norms and upsampling, so ``study_gflops`` = 2 x (MACs - those ops) / 1e9 must equal our
    GFLOPs. fvcore traces with ``torch.jit``, which cannot trace meta tensors, so this runs one
    real forward pass on CPU with zero weights (about 20 s for SD2.1 at 256 px on two cores).
    """
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

    def attention_macs(inputs: list[Any], outputs: list[Any]) -> int:
        """Q K^T and the weighted sum of V: Lq x Lk x (E + Ev) per batch and head."""
        q, k, v = (get_shape(value) for value in inputs[:3])
        return math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])

    model = meta_copy(module).to_empty(device="cpu")  # a fresh copy: the caller's module stays as it is
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            tensor.zero_()
    adapter = VAEAdapter(model, name=type(model).__name__, latent="mode")
    x, _ = adapter.pad(torch.zeros(1, 3, height, width))
    analysis = FlopCountAnalysis(_Stages(adapter, ["encode", "decode"]), (x,))
    analysis.set_op_handle("aten::scaled_dot_product_attention", attention_macs)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        by_module_op = analysis.by_module_and_operator()
    parts = {name: by_module_op.get(f"vae.{name}", {}) for name, _ in model.named_children()}

    def study(ops: dict[str, int]) -> int:
        return sum(n for op, n in ops.items() if op not in FVCORE_EXTRA_OPS)

    total = by_module_op[""]
    return {
        "macs": sum(total.values()),
        "macs_by_operator": dict(total),
        "macs_by_module": {name: sum(ops.values()) for name, ops in parts.items() if ops},
        "study_gflops": 2 * study(total) / 1e9,
        "study_gflops_by_module": {name: 2 * study(ops) / 1e9 for name, ops in parts.items() if ops},
    }


# --- The table of the study models -------------------------------------------------------------


def profile_table(
    models: Sequence[str] = STUDY_MODELS, sizes: Sequence[Sequence[int]] = ((256, 256), (600, 600))
) -> list[ModelProfile]:
    """Profiles of shipped architectures at each size (each architecture built once, on meta)."""
    rows = []
    for arch in models:
        meta = build_architecture(ModelConfig(name=arch, arch=arch))
        rows.extend(profile_module(meta, height, width, name=arch) for height, width in sizes)
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
    lines = [
        "One encode+decode of a 1x3xHxW input: 2 FLOPs per multiply-add, attention matmuls counted, "
        "norms and element-wise ops not (the study's convention); counted on the meta device.",
        "",
        "| Model | Input | Padded | GFLOPs | Encode | Decode | Params (M) enc / dec / total | Latent | f "
        "| Input/latent values |",
        "|---|---|---|---:|---:|---:|---|---|---:|---:|",
    ]
    for p in profiles:
        row = _table_row(p)
        params = f"{p.params_encoder / 1e6:.2f} / {p.params_decoder / 1e6:.2f} / {p.params / 1e6:.2f}"
        lines.append(
            f"| {p.model} | {p.height}x{p.width} | {row['padded']} | {row['gflops']} | "
            f"{row['encode_gflops']} | {row['decode_gflops']} | {params} | {row['latent_shape']} | "
            f"{p.spatial_ratio} | {row['compression_ratio']} |"
        )
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
    from vaes4rs.evaluate import pick_device

    settings = cfg.profile
    device = pick_device(settings.device)
    dtype = zoo.resolve_dtype(settings.dtype, device)
    if settings.random_weights:
        module = build_architecture(cfg.model, device).to(dtype)
    else:
        module = zoo.load_vae(cfg.model, device, dtype)
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
