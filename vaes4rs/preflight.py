"""Pre-flight: everything a job needs, checked before any work and reported in one message.

Device, model weights (a local folder's files, or the hub cache when offline), metric
networks (when ``metric.missing_weights=error``) and every image file's header are checked
before a model is loaded, so a user fixes all of it at once instead of one problem per run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vaes4rs import latents as latent_datasets
from vaes4rs.config import RunConfig
from vaes4rs.data import PreparedDataset, prepare
from vaes4rs.device import pick_device
from vaes4rs.distributed import local_device
from vaes4rs.errors import ConfigError, InputError
from vaes4rs.hub import hub_offline
from vaes4rs.metrics import weights
from vaes4rs.models.architecture import build_architecture
from vaes4rs.models.families import family_for
from vaes4rs.models.zoo import model_problems

SSIM_WINDOW = 11  # Gaussian window of SSIM (11 x 11)
MS_SSIM_MIN_SIDE = 161  # piq's MS-SSIM: five scales of the 11-pixel window


class PreflightError(InputError):
    """Everything that stops a job, one problem per line."""


@dataclass
class ReadyJob:
    """What the pre-flight check established: where to compute and the checked, batched dataset."""

    device: torch.device
    dataset: PreparedDataset
    latents: latent_datasets.LatentDataset | None = None  # dataset=latents: the stored latents to decode


def _spatial_multiple(cfg: RunConfig) -> int:
    """The model's spatial multiple from its architecture alone (no weights); 1 if it cannot be read."""
    try:
        meta = build_architecture(cfg.model)
    except (OSError, ValueError, RuntimeError):  # reported by model_problems
        return 1
    return family_for(meta).spatial_multiple(meta)


def min_image_side(cfg: RunConfig) -> int:
    """The smallest side the model can pad (its multiple) and the metrics' windows can take."""
    side = _spatial_multiple(cfg)
    if cfg.metric.ssim:
        side = max(side, SSIM_WINDOW)
    if cfg.metric.ms_ssim:
        side = max(side, MS_SSIM_MIN_SIDE)
    return side


def _metric_network_problems(cfg: RunConfig) -> list[str]:
    """With ``missing_weights=error``, a missing network file stops the job: find it now.

    With ``skip`` the metric suite leaves such a metric out with one warning when it loads.
    """
    if cfg.metric.missing_weights != "error":
        return []
    problems = []
    for key, spec in weights.WEIGHT_FILES.items():
        if any(getattr(cfg.metric, switch) for switch in spec.switches):
            try:
                weights.weight_path(key, cfg.metric.weights)
            except weights.MissingWeightsError as exc:
                problems.append(str(exc))
    return problems


def _timm_model_problems(cfg: RunConfig) -> list[str]:
    """A CMMD or probe network name timm does not know (a typo) stops the job before any work."""
    from vaes4rs.metrics.cmmd import CLIP_MODEL

    named = [(CLIP_MODEL, "metric.cmmd")] if cfg.metric.cmmd else []
    named += [(cfg.metric.probe, "metric.probe")] if cfg.metric.probe else []
    problems = []
    for name, setting in named:
        try:
            weights.timm_weights_source(name, setting)
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


def device_and_model_problems(cfg: RunConfig) -> tuple[torch.device, list[str]]:
    """Where the job computes, and what is wrong with the device or the model's files."""
    problems: list[str] = []
    device = torch.device("cpu")
    try:
        device = local_device(pick_device(cfg.run.device))
    except RuntimeError as exc:
        problems.append(str(exc))
    uses_hub = cfg.dataset.source == "hub" or (cfg.model.loader == "diffusers" and not cfg.model.path)
    downloads = uses_hub or (cfg.model.loader == "tiny" and not cfg.model.path)
    problems += model_problems(cfg.model, hub_offline() if downloads else False)
    return device, problems


def check(cfg: RunConfig) -> ReadyJob:
    """Check the whole job; raise PreflightError listing every problem, or return what is ready."""
    device, problems = device_and_model_problems(cfg)
    problems += _metric_network_problems(cfg)
    problems += _timm_model_problems(cfg)
    dataset, latents = None, None
    pin = device.type == "cuda"
    try:
        if cfg.dataset.source == "latents":
            latents, dataset = latent_datasets.prepare_run(cfg.dataset, cfg.run.batch_size, pin)
            problems += latent_datasets.model_problems(latents, cfg.model)
        else:
            dataset = prepare(cfg.dataset, cfg.run.batch_size, pin, min_image_side(cfg))
    except (InputError, OSError, ValueError) as exc:
        problems.append(str(exc))
    if problems or dataset is None:
        listed = "\n".join(f"- {problem}" for problem in problems)
        raise PreflightError(f"job {cfg.model.name} on {cfg.dataset.name} cannot start:\n{listed}")
    return ReadyJob(device, dataset, latents)
