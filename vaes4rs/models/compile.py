"""torch.compile of a VAE's encoder and decoder, the parts that hold nearly all of its FLOPs.

Every supported family (AutoencoderKL, AutoencoderKLFlux2, AutoencoderDC, AutoencoderKLQwenImage,
AutoencoderTiny, our TinyAutoencoder) calls ``module.encoder`` and ``module.decoder`` from its
encode/decode, so compiling those two submodules in place serves every family without touching
its quirks: latent sampling, the quant convs, padding and Qwen's frame axis stay eager and
unchanged. ``nn.Module.compile`` keeps the module's class, parameter names and state dict
(``family_for``, ``model_stats`` and checkpoints see the same model), and a ``copy.deepcopy``
of the VAE (the adapter's float32 fallback) comes out eager, because ``nn.Module`` drops the
compiled call when it is copied.

Shapes are static (``dynamic=False``): one graph per input size and batch size, as a job sees
a few image sizes and full batches; a short last batch costs one more compilation.
"""

from __future__ import annotations

import torch
from torch import nn

COMPILED_PARTS = ("encoder", "decoder")


def compiled_parts(module: nn.Module) -> list[nn.Module]:
    """The encoder and decoder submodules that ``compile_vae`` compiles; an error names what is missing."""
    missing = [name for name in COMPILED_PARTS if not isinstance(getattr(module, name, None), nn.Module)]
    if missing:
        raise ValueError(
            f"{type(module).__name__} has no {' / '.join(missing)} submodule: compile_vae compiles "
            f"the {' and '.join(COMPILED_PARTS)} that the VAE families call"
        )
    return [getattr(module, name) for name in COMPILED_PARTS]


def compile_vae(
    module: nn.Module,
    *,
    channels_last: bool = False,
    backend: str = "inductor",
    mode: str | None = None,
) -> nn.Module:
    """Compile ``module.encoder`` and ``module.decoder`` in place (static shapes); returns ``module``.

    ``channels_last`` stores the 2-D convolution weights NHWC, so cuDNN picks NHWC kernels
    from the first layer on (3-D convolutions, Qwen-Image's, stay as they are); Inductor
    chooses layouts itself, so measure before keeping it. Compilation happens at the first
    call of each new shape, not here.
    """
    parts = compiled_parts(module)
    if channels_last:
        for layer in module.modules():
            if isinstance(layer, nn.Conv2d):
                layer.to(memory_format=torch.channels_last)
    for part in parts:
        part.compile(backend=backend, mode=mode, dynamic=False)
    return module
