"""A protocol's metric suite: per-image columns per batch, dataset-level numbers at the end.

The evaluation loop calls ``submit(recon, original, labels=...)`` per batch and reads the
values one batch later (``update`` reads them at once), ``finalize(table)`` once with the
per-image table in dataset order, and stores ``protocol()`` under "protocol" in
metrics.json. Each metric is a small class in ``METRICS`` so new ones slot in without
touching the loop; a protocol (conf/metric/*.yaml) only switches them on and picks among
definitions. No metric keeps images: per-image values go to the results table, FID keeps
running float64 feature sums, KID keeps features only for sets under 2,048 images, CMMD and
the probe keep one embedding per image and set (768 floats for CLIP) with its class label.

What ``finalize`` returns, i.e. ``metrics`` in metrics.json, is a flat dict of numbers:

- ``psnr``, ``ssim``, ``lpips``, ``lpips_vgg``, ``ms_ssim``, ``dists``: the protocol's mean of
  the per-image column (mean of per-group means for ``pool_size`` > 1; PSNR pools each
  group's MSE first, as the study did);
- ``<name>_ci95_lo`` and ``<name>_ci95_hi`` next to each of those when ``bootstrap`` > 0:
  the percentile-bootstrap 95% interval of the per-image mean (parallel keys rather than a
  nested object, so every value stays a number that tables and trackers can read);
- ``fid`` with ``fid_n`` (images per set: originals and reconstructions count the same);
- ``kid`` and ``kid_std`` (mean and spread over torch-fidelity's random subsets);
- ``cmmd``, ``cmmd_biased`` and ``cmmd_n`` (``vaes4rs.metrics.cmmd``);
- ``probe_acc``, ``probe_acc_recon``, ``probe_drop``, ``probe_acc_fit_recon``,
  ``probe_drop_fit_recon``, ``probe_n_train`` and ``probe_n_test`` (``vaes4rs.metrics.probe``).

``summarise`` gives the same numbers for one class's rows (per_class.csv): the per-image
metrics' aggregates, and ``cmmd`` and the probe's numbers of that class.

A metric switched off (``metric.fid=false``) or not computable (KID on 2,048 images or
more, FID on one image) is absent, never zero; ``protocol()["not_computed"]`` says why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from vaes4rs.config import MetricConfig
from vaes4rs.device import HostCopy
from vaes4rs.metrics import cmmd, fid, perceptual, pixel, probe, stats, weights
from vaes4rs.metrics.features import FrozenFeatures, KeptFeatures
from vaes4rs.metrics.reference_cache import REFERENCE_FEATURES, ReferenceBatch, Reuse, file_identity

log = logging.getLogger(__name__)


@dataclass
class PendingColumns:
    """A batch's per-image columns on their way to the host (``MetricSuite.submit``)."""

    names: list[str]
    values: HostCopy | None  # (columns, images) float64; None when the suite has no column

    def get(self) -> dict[str, np.ndarray]:
        """Column name -> one value per image (waits for the copy)."""
        return {} if self.values is None else dict(zip(self.names, self.values.get().numpy()))


Networks = dict[str, Any]  # metric class name -> its loaded network, shared by one job's suites


class Metric:
    """Base class: ``update`` returns per-image columns; ``finalize`` set-level values."""

    name: str = ""
    columns: tuple[str, ...] = ()
    definition: str = ""  # recorded in metrics.json so a number says how it was made
    # Its network is built from metric weight files alone (weights.WEIGHT_FILES), so the next
    # job of the process may take it over (SharedNetworks).
    network_outlives_job: ClassVar[bool] = False

    def __init__(self, cfg: MetricConfig, device: torch.device, networks: Networks | None = None) -> None:
        self.cfg = cfg
        self.device = device
        self.not_computed: dict[str, str] = {}  # metric key -> why it is absent from the results
        self._networks = {} if networks is None else networks  # shared by the suites of one job

    def network(self, build: Callable[[], Any]) -> Any:
        """This metric's frozen network: built once, then shared with the job's other suites.

        The degraded-input baseline is a second suite of the same protocol; its networks hold no
        state, so it reuses the first suite's instead of loading a second CLIP ViT-L or Inception.
        """
        key = type(self).__name__
        if key not in self._networks:
            self._networks[key] = build()
        return self._networks[key]

    @classmethod
    def enabled(cls, cfg: MetricConfig) -> bool:
        return bool(getattr(cfg, cls.name))

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Score a batch; pred/target are [-1, 1] float tensors after the protocol's casts."""
        raise NotImplementedError

    def observe(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        labels: Sequence[str] | None,
        reuse: Reuse | None = None,
    ) -> dict[str, torch.Tensor]:
        """What the suite calls per batch: ``update``, for the metrics that need no class labels.

        ``reuse``: how to find this batch's reference features from an earlier job of the
        process (only FID's Inception keeps them).
        """
        return self.update(pred, target)

    def finalize(self, table: dict[str, np.ndarray]) -> dict[str, float]:
        """Dataset-level values from the per-image table (rows in dataset order)."""
        raise NotImplementedError

    def summarise(self, table: dict[str, np.ndarray]) -> dict[str, float]:
        """Values over some rows (one class) for per_class.csv; set-level metrics have none by default."""
        return {}

    def state(self) -> dict[str, Any]:
        """What the metric keeps across batches (a checkpoint holds it; per-image metrics keep none)."""
        return {"not_computed": dict(self.not_computed)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.not_computed = dict(state["not_computed"])

    def merge_states(self, states: list[dict[str, Any]], batches: list[list[int]]) -> None:
        """Load several processes' states as one; ``batches[r]``: the batch numbers rank r scored."""
        self.not_computed = {k: v for state in states for k, v in state["not_computed"].items()}


class PerImageMetric(Metric):
    """A per-image column, reported as the protocol's mean of it (with a CI when asked)."""

    def finalize(self, table):
        return self.summary(stats.group_mean(table[self.name], self.cfg.pool_size), table[self.name])

    def summarise(self, table):
        """``finalize`` over the rows; a subset too small for an interval is no job-level omission."""
        recorded = dict(self.not_computed)
        values = self.finalize(table)
        self.not_computed = recorded
        return values

    def summary(self, value: float, per_image: np.ndarray) -> dict[str, float]:
        out = {self.name: value}
        if self.cfg.bootstrap and len(per_image) < 2:
            self.not_computed[f"{self.name}_ci95"] = "a confidence interval needs at least 2 images"
        elif self.cfg.bootstrap:
            low, high = stats.bootstrap_ci(per_image, self.cfg.bootstrap, self.cfg.bootstrap_seed)
            out[f"{self.name}_ci95_lo"], out[f"{self.name}_ci95_hi"] = low, high
        return out


class PSNR(PerImageMetric):
    name = "psnr"
    columns = ("mse", "psnr")
    definition = "10 log10(range^2 / MSE), float64; pool_size > 1 pools each group's MSE"

    def update(self, pred, target):
        data_range = pixel.DATA_RANGE[self.cfg.value_range]
        pred = pixel.to_value_range(pred, self.cfg.value_range)
        target = pixel.to_value_range(target, self.cfg.value_range)
        mse = pixel.mse_per_image(pred, target)
        return {"mse": mse, "psnr": pixel.psnr_from_mse(mse, data_range)}

    def finalize(self, table):
        n_values = 3 * table["height"].astype(np.float64) * table["width"]
        data_range = pixel.DATA_RANGE[self.cfg.value_range]
        pooled = pixel.pooled_psnr(table["mse"], n_values, self.cfg.pool_size, data_range)
        return self.summary(pooled, table["psnr"])


class SSIM(PerImageMetric):
    name = "ssim"
    columns = ("ssim",)
    definition = "Gaussian window 11, sigma 1.5, k1 0.01, k2 0.03, no downsampling; borders: ssim_border"

    def update(self, pred, target):
        data_range = pixel.DATA_RANGE[self.cfg.value_range]
        pred = pixel.to_value_range(pred, self.cfg.value_range)
        target = pixel.to_value_range(target, self.cfg.value_range)
        return {"ssim": pixel.ssim_per_image(pred, target, data_range, self.cfg.ssim_border)}


class LPIPS(PerImageMetric):
    name = "lpips"
    network_outlives_job = True
    columns = ("lpips",)
    definition = "LPIPS v0.1, AlexNet backbone and official linear heads, network input [-1, 1]"

    def __init__(self, cfg: MetricConfig, device: torch.device, networks: Networks | None = None) -> None:
        super().__init__(cfg, device, networks)
        self.net = self.network(lambda: perceptual.load_lpips_alex(cfg.weights, device))

    def update(self, pred, target):
        return {"lpips": self.net(pred.float(), target.float())}


class LPIPSVGG(PerImageMetric):
    name = "lpips_vgg"
    network_outlives_job = True
    columns = ("lpips_vgg",)
    definition = "piq LPIPS, VGG16 backbone, input [0, 1] (ImageNet-normalised inside)"

    def __init__(self, cfg: MetricConfig, device: torch.device, networks: Networks | None = None) -> None:
        super().__init__(cfg, device, networks)
        self.net = self.network(lambda: perceptual.load_lpips_vgg(cfg.weights, device))

    def update(self, pred, target):
        return {"lpips_vgg": self.net((pred.float() + 1) / 2, (target.float() + 1) / 2)}


class MSSSIM(PerImageMetric):
    name = "ms_ssim"
    columns = ("ms_ssim",)
    definition = "piq MS-SSIM on [0, 1], range 1, Gaussian 11 / 1.5, five scales"

    def update(self, pred, target):
        return {"ms_ssim": perceptual.ms_ssim_per_image((pred + 1) / 2, (target + 1) / 2)}


class DISTS(PerImageMetric):
    name = "dists"
    network_outlives_job = True
    columns = ("dists",)
    definition = "piq DISTS, VGG16 with L2 pooling, input [0, 1], sides over 256 px resized to 256"

    def __init__(self, cfg: MetricConfig, device: torch.device, networks: Networks | None = None) -> None:
        super().__init__(cfg, device, networks)
        self.net = self.network(lambda: perceptual.load_dists(cfg.weights, device))

    def update(self, pred, target):
        return {"dists": self.net((pred.float() + 1) / 2, (target.float() + 1) / 2)}


class InceptionDistances(Metric):
    """FID (running statistics) and KID (kept features, small sets only) of originals vs reconstructions."""

    name = "fid"
    definition = "InceptionV3 2048-d pool features (torch-fidelity weights), float64 statistics"
    network_outlives_job = True

    @classmethod
    def enabled(cls, cfg: MetricConfig) -> bool:
        return cfg.fid or cfg.kid

    def __init__(self, cfg: MetricConfig, device: torch.device, networks: Networks | None = None) -> None:
        super().__init__(cfg, device, networks)
        self.net = self.network(lambda: fid.load_inception(cfg.weights, cfg.fid_resize, device))
        self.real = fid.FeatureStats(fid.FEATURE_DIM, device)
        self.fake = fid.FeatureStats(fid.FEATURE_DIM, device)
        self.kept: list[tuple[torch.Tensor, torch.Tensor]] | None = [] if cfg.kid else None

    def update(self, pred, target):
        return self.observe(pred, target, None)

    def input_settings(self) -> tuple:
        """What turns the reference images into features: their part of reused features' key.

        Read when a batch is looked up, not at start-up: a network given in place of the file
        (tests) needs no file until features are kept.
        """
        network = weights.weight_path("inception", self.cfg.weights)
        return (self.cfg.fid_quantize, self.cfg.fid_resize, str(self.device), *file_identity(network))

    def observe(self, pred, target, labels, reuse=None):
        real = None
        if reuse is not None:
            key = (reuse.key, *self.input_settings())
            real = REFERENCE_FEATURES.get(key, self.device)
        if real is None:
            real = self.net(pixel.to_uint8(target, self.cfg.fid_quantize))
            if reuse is not None:
                REFERENCE_FEATURES.put(key, real, reuse.budget_mib)
        fake = self.net(pixel.to_uint8(pred, self.cfg.fid_quantize))
        self.real.update(real)
        self.fake.update(fake)
        if self.kept is not None:
            if self.real.count < fid.KID_MAX_IMAGES:
                self.kept.append((real, fake))  # on the device until a checkpoint or finalize reads them
            else:
                self.kept = None
                self.not_computed["kid"] = (
                    f"{fid.KID_MAX_IMAGES} images or more: KID needs every feature, kept only below that"
                )
        return {}

    def state(self):
        stats = {
            name: (s.count, s.total.cpu(), s.outer.cpu())
            for name, s in (("real", self.real), ("fake", self.fake))
        }
        kept = None if self.kept is None else [(real.cpu(), fake.cpu()) for real, fake in self.kept]
        return {**super().state(), **stats, "kept": kept}

    def load_state(self, state):
        super().load_state(state)
        for running, (count, total, outer) in ((self.real, state["real"]), (self.fake, state["fake"])):
            running.count = count
            running.total = total.to(running.total.device)
            running.outer = outer.to(running.outer.device)
        self.kept = state["kept"]

    def merge_states(self, states, batches):
        super().merge_states(states, batches)
        for name, running in (("real", self.real), ("fake", self.fake)):
            running.count = sum(state[name][0] for state in states)
            running.total = sum(state[name][1] for state in states).to(running.total.device)
            running.outer = sum(state[name][2] for state in states).to(running.outer.device)
        if any(state["kept"] is None for state in states) or self.real.count >= fid.KID_MAX_IMAGES:
            self.kept = None
            if self.cfg.kid:
                self.not_computed["kid"] = (
                    f"{fid.KID_MAX_IMAGES} images or more: KID needs every feature, kept only below that"
                )
            return
        # Each rank kept one entry per batch it scored, in its own order: back to the set's order.
        numbered = [pair for state, numbers in zip(states, batches) for pair in zip(numbers, state["kept"])]
        self.kept = [entry for _, entry in sorted(numbered, key=lambda pair: pair[0])]

    def finalize(self, table):
        out: dict[str, float] = {}
        if self.real.count < 2:
            for key in ("fid", "kid"):
                if getattr(self.cfg, key):
                    self.not_computed[key] = f"needs at least 2 images, got {self.real.count}"
            return out
        if self.cfg.fid:
            out["fid"] = fid.frechet_distance(*self.real.mean_cov(), *self.fake.mean_cov())
            out["fid_n"] = self.real.count
        if self.kept is not None:
            real, fake = (torch.cat([part.cpu() for part in parts]) for parts in zip(*self.kept))
            out["kid"], out["kid_std"] = fid.kid(real, fake, self.cfg.kid_subsets, self.cfg.kid_subset_size)
        return out


class KeptEmbeddings(Metric):
    """Set-level numbers from one embedding per image and set, kept per batch with the class labels.

    The kept batches are the checkpoint state; several processes' batches are merged back into
    the set's batch order. ``per_class`` (filled by ``finalize``) feeds per_class.csv.
    """

    def __init__(self, cfg: MetricConfig, device: torch.device, networks: Networks | None = None) -> None:
        super().__init__(cfg, device, networks)
        self.net = self.network(self.load)
        self.kept = KeptFeatures()
        self.per_class: dict[str, dict[str, float]] = {}

    def load(self) -> FrozenFeatures:
        raise NotImplementedError

    def observe(self, pred, target, labels, reuse=None):
        self.kept.add(labels, self.net(target), self.net(pred))
        return {}

    def state(self):
        return {**super().state(), "kept": self.kept.entries}

    def load_state(self, state):
        super().load_state(state)
        self.kept = KeptFeatures(list(state["kept"]))

    def merge_states(self, states, batches):
        super().merge_states(states, batches)
        self.kept = KeptFeatures.merge([KeptFeatures(list(state["kept"])) for state in states], batches)

    def summarise(self, table):
        """The class's values when the rows are one class's (per_class.csv asks class by class)."""
        classes = set(table["class"].tolist())
        return dict(self.per_class.get(classes.pop(), {})) if len(classes) == 1 else {}


class CMMD(KeptEmbeddings):
    name = "cmmd"
    definition = (
        f"CLIP ViT-L/14-336 (OpenAI weights, timm {cmmd.CLIP_MODEL}) 768-d projected image embeddings, "
        "L2-normalised, of [0, 1] images after CLIP's eval preprocessing (bicubic antialiased resize to 336, "
        f"centre crop, CLIP mean/std); Gaussian RBF sigma {cmmd.SIGMA:g}; MMD^2 x {cmmd.SCALE:g}, unbiased "
        "(paper Eq. 3); cmmd_biased: the reference code's estimate (all pairs, diagonal included)"
    )
    clip_model = cmmd.CLIP_MODEL  # the tests plant a one-block CLIP of the same family instead
    clip_overrides: dict[str, Any] = {}

    def load(self):
        overrides = self.clip_overrides
        return cmmd.load_clip(self.cfg.weights, self.device, model_name=self.clip_model, **overrides)

    def finalize(self, table):
        if self.kept.count < 2:
            self.not_computed["cmmd"] = f"needs at least 2 images, got {self.kept.count}"
            return {}
        real, fake = self.kept.real().to(self.device), self.kept.fake().to(self.device)
        unbiased, biased = cmmd.mmd2(real, fake)
        labels = np.asarray(self.kept.labels() or [])
        self.per_class = {}
        for label in sorted(set(labels.tolist())):
            rows = torch.from_numpy(np.flatnonzero(labels == label)).to(self.device)
            if len(rows) >= 2:
                self.per_class[label] = {"cmmd": cmmd.mmd2(real[rows], fake[rows])[0]}
        return {"cmmd": unbiased, "cmmd_biased": biased, "cmmd_n": self.kept.count}


class Probe(KeptEmbeddings):
    name = "probe"
    probe_overrides: dict[str, Any] = {}  # timm model arguments of the tests' small stand-ins

    def __init__(self, cfg: MetricConfig, device: torch.device, networks: Networks | None = None) -> None:
        super().__init__(cfg, device, networks)
        self.definition = (
            f"timm {cfg.probe} pooled features (num_classes=0) after its eval preprocessing; "
            f"{cfg.probe_classifier} classifier ({self._classifier_text()}) fit on a seeded split "
            f"({cfg.probe_train_fraction:g} of each class, seed {cfg.probe_seed}) of the originals "
            "(probe_acc, probe_acc_recon) or of the reconstructions (probe_acc_fit_recon), scored on "
            "the held-out images; accuracies are fractions, drops are probe_acc minus the other"
        )

    def _classifier_text(self) -> str:
        if self.cfg.probe_classifier == "knn":
            return f"k={probe.KNN_K} cosine neighbours, votes exp(sim/{probe.KNN_TEMPERATURE:g})"
        return f"ridge regression onto one-hot classes, standardised features, penalty {probe.RIDGE:g}"

    def load(self):
        return probe.load_probe(str(self.cfg.probe), self.cfg.weights, self.device, **self.probe_overrides)

    def observe(self, pred, target, labels, reuse=None):
        if labels is None:
            raise ValueError("metric.probe needs each image's class: MetricSuite.update(..., labels=...)")
        return super().observe(pred, target, labels)

    def finalize(self, table):
        labels = self.kept.labels()
        if not labels:
            self.not_computed["probe"] = "no image was scored"
            return {}
        try:
            overall, self.per_class = probe.scores(
                self.kept.real().to(self.device),
                self.kept.fake().to(self.device),
                labels,
                str(self.cfg.probe_classifier),
                self.cfg.probe_train_fraction,
                self.cfg.probe_seed,
            )
        except probe.ProbeUnavailable as exc:
            self.not_computed["probe"] = str(exc)
            return {}
        return overall


METRICS: tuple[type[Metric], ...] = (
    PSNR,
    SSIM,
    LPIPS,
    LPIPSVGG,
    MSSSIM,
    DISTS,
    InceptionDistances,
    CMMD,
    Probe,
)


class SharedNetworks:
    """The metric networks of a process's last job, for its next job (a sweep runs its jobs in one
    process, usually all with one protocol).

    Loading LPIPS and InceptionV3 costs a job ~0.4 s, compiling them (``run.compile``) far more.
    Only networks built from the metric weight files alone are kept (``Metric.network_outlives_job``;
    CLIP and the probe's backbone come from timm's hub cache), under a key of all that builds
    them: the protocol, the device, the compile backend and the path, size and modification time
    of every metric weight file (``job_key``). A job with another key replaces them.
    """

    def __init__(self) -> None:
        self.key: Hashable = None
        self.networks: Networks = {}

    @staticmethod
    def job_key(cfg: MetricConfig, device: torch.device, compile_backend: object) -> tuple:
        files = []
        for key in weights.WEIGHT_FILES:
            given = cfg.weights.get(key)
            path = Path(given).expanduser() if given else weights.default_path(key)
            files.append((key, *(file_identity(path) if path.is_file() else (str(path), None, None))))
        return repr(cfg), str(device), repr(compile_backend), tuple(files)

    def for_job(self, key: Hashable) -> Networks:
        """The kept networks if ``key`` is the last job's, else a new, empty store."""
        if key != self.key:
            self.key, self.networks = key, {}
        return self.networks

    def clear(self) -> None:
        self.key, self.networks = None, {}


SHARED_NETWORKS = SharedNetworks()  # one per process


def compile_networks(networks: Networks, backend: str | Callable = "inductor") -> None:
    """torch.compile every frozen metric network in place, with static shapes.

    Compiled float32 networks compute the same functions up to float32 rounding (Inductor on a
    CPU moved InceptionV3's features by at most 2.4e-7 of the largest on 8 RESISC45 images:
    benchmarks/metric_compile.py). A network already compiled, shared with the baseline's
    suite, is left as it is.
    """
    for network in networks.values():
        module = network.model if isinstance(network, FrozenFeatures) else network
        # nn.Module.compile keeps the module (class, state dict) and keeps the compiled call here
        if isinstance(module, nn.Module) and getattr(module, "_compiled_call_impl", None) is None:
            module.compile(backend=backend, dynamic=False)


class MetricSuite:
    """The metrics a protocol switches on, with its casts (ground-truth dtype, quantisation).

    Networks are loaded once, here, and live as long as the suite (one job).
    """

    def __init__(
        self,
        cfg: MetricConfig,
        device: torch.device,
        model_dtype: torch.dtype,
        networks: Networks | None = None,
        feature_cache_mib: int = 0,
        compile_backend: str | Callable | None = None,
        shared: Networks | None = None,
    ) -> None:
        """``networks``: another suite's ``networks`` to reuse its loaded metric networks.

        ``feature_cache_mib``: memory for reference features kept across the process's jobs
        (``run.feature_cache_mb``; used when ``update`` is told the batch's ``source``).
        ``compile_backend``: torch.compile the metric networks with it (``run.compile``).
        ``shared``: networks an earlier job left for this one (``SharedNetworks.for_job``); the
        ones this suite builds that may outlive the job are left there in turn.
        """
        self.cfg = cfg
        self.model_dtype = model_dtype
        self.feature_cache_mib = feature_cache_mib
        self.networks: Networks = {} if networks is None else networks
        self.networks.update(shared or {})
        self.metrics: list[Metric] = []
        self.skipped: dict[str, str] = {}  # metric key -> why its network could not be loaded
        for cls in METRICS:
            if cls.enabled(cfg):
                self._add(cls, device)
        self.compiled = compile_backend is not None
        if compile_backend is not None:
            compile_networks(self.networks, compile_backend)
        if shared is not None:
            lasting = {type(m).__name__ for m in self.metrics if m.network_outlives_job}
            shared.update({name: net for name, net in self.networks.items() if name in lasting})

    def _add(self, cls: type[Metric], device: torch.device) -> None:
        """Load one metric; a missing network file skips it (loudly) or stops the job."""
        try:
            self.metrics.append(cls(cfg=self.cfg, device=device, networks=self.networks))
        except weights.MissingWeightsError as exc:
            if self.cfg.missing_weights == "error":
                raise
            keys = (
                [key for key in ("fid", "kid") if getattr(self.cfg, key)]
                if cls is InceptionDistances
                else [cls.name]
            )
            for key in keys:
                self.skipped[key] = f"network weights missing (metric.missing_weights=skip): {exc}"
            log.warning("%s skipped, the job goes on without it: %s", "/".join(keys), exc)

    @property
    def columns(self) -> list[str]:
        return [column for metric in self.metrics for column in metric.columns]

    def reuses_reference_features(self) -> bool:
        """Whether ``update`` looks reference features up: a cache budget and FID/KID loaded.

        Only then does the loop need to say each batch's ``source`` (which stats its files).
        """
        return self.feature_cache_mib > 0 and any(isinstance(m, InceptionDistances) for m in self.metrics)

    def prepare(self, recon: torch.Tensor, original: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the protocol's casts: quantise the reconstruction, cast the ground truth."""
        pred = pixel.quantize(recon.float(), self.cfg.quantize)
        target = original.float()
        if self.cfg.gt_dtype == "model":
            target = target.to(self.model_dtype).float()
        return pred, target

    def update(
        self,
        recon: torch.Tensor,
        original: torch.Tensor,
        *,
        labels: Sequence[str] | None = None,
        source: ReferenceBatch | None = None,
    ) -> dict[str, np.ndarray]:
        """Per-image columns of a batch, read at once (``submit`` queues them).

        ``labels``: each image's class, which the probe needs and CMMD uses for per-class values.
        ``source``: where ``original`` came from, so later jobs can reuse its features.
        """
        return self.submit(recon, original, labels=labels, source=source).get()

    def submit(
        self,
        recon: torch.Tensor,
        original: torch.Tensor,
        *,
        labels: Sequence[str] | None = None,
        source: ReferenceBatch | None = None,
    ) -> PendingColumns:
        """``update`` without waiting for the values: the metrics' work and one copy of the
        batch's per-image values to the host are queued, and ``get`` reads them (``no_grad``
        as a block: mutation testing skips decorated functions)."""
        reuse = None
        if source is not None and self.feature_cache_mib > 0:
            casts = (str(self.cfg.gt_dtype), str(self.model_dtype) if self.cfg.gt_dtype == "model" else None)
            reuse = Reuse((source, *casts, self.compiled), self.feature_cache_mib)
        with torch.no_grad():
            pred, target = self.prepare(recon, original)
            observed: dict[str, torch.Tensor] = {}
            for metric in self.metrics:
                observed.update(metric.observe(pred, target, labels, reuse))
            if not observed:
                return PendingColumns([], None)
            # One device-to-host copy per batch, stacked, as every copy has a fixed cost.
            stacked = torch.stack([value.detach().double().reshape(len(pred)) for value in observed.values()])
        return PendingColumns(list(observed), HostCopy(stacked))

    def finalize(self, table: dict[str, np.ndarray]) -> dict[str, float]:
        values: dict[str, float] = {}
        for metric in self.metrics:
            values.update(metric.finalize(table))
        for key, reason in self.not_computed().items():
            if key not in self.skipped:  # those were reported once, when their network was missing
                log.warning("%s not computed: %s", key, reason)
        return values

    def summarise(self, table: dict[str, np.ndarray]) -> dict[str, float]:
        """The metrics over some rows (one class), aggregated as ``finalize`` does: per-image
        metrics from the rows, CMMD and the probe from what ``finalize`` found for the class."""
        values: dict[str, float] = {}
        for metric in self.metrics:
            values.update(metric.summarise(table))
        return values

    def state_dict(self) -> dict[str, Any]:
        """The running state of every metric, for a checkpoint: resuming from it continues exactly."""
        return {metric.name: metric.state() for metric in self.metrics}

    def merge_state_dicts(self, states: list[dict[str, Any]], batches: list[list[int]]) -> None:
        """The running state of several processes merged (see ``vaes4rs.distributed``)."""
        for metric in self.metrics:
            metric.merge_states([state[metric.name] for state in states], batches)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if sorted(state) != sorted(metric.name for metric in self.metrics):
            raise ValueError(f"checkpoint holds metrics {sorted(state)}, this protocol computes others")
        for metric in self.metrics:
            metric.load_state(state[metric.name])

    def not_computed(self) -> dict[str, str]:
        found = {key: reason for metric in self.metrics for key, reason in metric.not_computed.items()}
        return {**self.skipped, **found}

    def protocol(self) -> dict[str, Any]:
        """Every parameter of the protocol, the definitions in use, and what could not be computed."""
        return {
            "name": self.cfg.protocol,
            **{k: v for k, v in asdict(self.cfg).items() if k != "protocol"},
            "definitions": {metric.name: metric.definition for metric in self.metrics},
            "not_computed": self.not_computed(),
        }
