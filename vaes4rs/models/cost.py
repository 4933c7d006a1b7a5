"""Cost of a VAE in the study's convention: FLOPs, parameters and latent shapes, without weights.

GFLOPs = FLOPs of one encode+decode of a 1x3xHxW input through ``VAEAdapter`` (padding, the
5-D Qwen input and all), 2 FLOPs per multiply-add, attention matmuls counted, norms and
element-wise ops not. Counted by ``torch.utils.flop_counter.FlopCounterMode`` on the ``meta``
device, with the architecture rebuilt from its config: no weights, no arithmetic, the same
answer on any machine. Counting real CPU tensors would silently drop attention (CPU attention
kernels have no FLOP formula: 890.61 instead of 894.91 GFLOPs for SD2.1). fvcore, which counts
differently, is the independent cross-check (``fvcore_breakdown``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vaes4rs.models.adapter import VAEAdapter
from vaes4rs.models.architecture import meta_copy
from vaes4rs.models.families import family_for

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


def _as_meta(module: nn.Module) -> nn.Module:
    """The module itself when it is on meta already, else its meta copy."""
    return module if next(module.parameters()).device.type == "meta" else meta_copy(module)


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
        latent_shape=family_for(meta).latent_shape(encoded.output),
    )


def model_stats(module: torch.nn.Module, adapter: VAEAdapter) -> dict[str, Any]:
    """Cost and shape facts of the model, at the study's 256x256 and at every size evaluated."""
    sizes = sorted({(256, 256), *adapter.latent_shapes})
    meta = meta_copy(module)  # rebuilt once, counted at every size
    profiles = {f"{h}x{w}": profile_module(meta, h, w) for h, w in sizes}
    reference = profiles["256x256"]
    return {
        "class": reference.class_name,
        "params": reference.params,
        "params_encoder": reference.params_encoder,
        "params_decoder": reference.params_decoder,
        "spatial_multiple": adapter.multiple,
        "spatial_ratio": reference.spatial_ratio,
        "latent_channels": reference.latent_shape[0],
        "latent_shape": {size: list(p.latent_shape) for size, p in profiles.items()},
        "gflops": {size: round(p.gflops, 4) for size, p in profiles.items()},
        "compression_ratio": {size: round(p.compression_ratio, 4) for size, p in profiles.items()},
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
