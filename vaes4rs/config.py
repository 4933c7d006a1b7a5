"""Structured-config schemas: every Hydra config is merged into these at start-up.

Merging the composed YAML into the dataclasses catches misspelt keys, wrong types and
invalid choices before a single image is read, so a sweep never dies an hour in.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vaes4rs.errors import ConfigError


class Choice(str, Enum):
    """An enumerated setting: OmegaConf refuses any other value and lists the valid ones itself.

    A ``str`` subclass whose ``str()`` is its value, so code compares it with plain strings and
    it serialises (JSON, W&B, f-strings) as the value the user typed.
    """

    def __str__(self) -> str:
        return self.value


class DType(Choice):
    auto = "auto"  # bfloat16 on CUDA (as the study ran), float32 elsewhere
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Device(Choice):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class ModelLoader(Choice):
    diffusers = "diffusers"  # from_pretrained
    tiny = "tiny"  # our TAESD-family module


class DatasetSource(Choice):
    hub = "hub"
    folder = "folder"
    latents = "latents"  # a latent dataset written by vaes4rs.encode: decoded, scored against its sources
    scene = "scene"  # one large raster (dataset.path), evaluated in tiles


class Stretch(Choice):
    none = "none"  # 8-bit data as is; 16-bit scaled by its dtype's range
    minmax = "minmax"
    percentile = "percentile"  # dataset.stretch_percentiles, per band


class StretchScope(Choice):
    image = "image"  # limits from each image (or scene) itself
    dataset = "dataset"  # one set of limits per band for the whole dataset


class BandMode(Choice):
    rgb = "rgb"  # the three bands dataset.bands names (or the file's first three) as RGB
    each = "each"  # every band alone, as grayscale replicated to three channels


class Reference(Choice):
    clean = "clean"  # score against the image before dataset.degrade (and score the degraded input too)
    input = "input"  # score against what the VAE was given (the study's code)


class ProbeClassifier(Choice):
    linear = "linear"
    knn = "knn"


class LatentPolicy(Choice):
    sample = "sample"
    mode = "mode"


class GroundTruthDType(Choice):
    model = "model"
    float32 = "float32"


class ValueRange(Choice):
    minus_one_one = "minus_one_one"
    zero_one = "zero_one"


class Quantize(Choice):
    none = "none"
    round = "round"
    truncate = "truncate"


class SSIMBorder(Choice):
    reflect = "reflect"  # torchmetrics >= 1.5 (reflect-padded)
    valid = "valid"  # Wang et al. / skimage


class FIDResize(Choice):
    antialias = "antialias"  # torchmetrics >= 1.8 default
    tf1 = "tf1"  # torch-fidelity's TF1-compatible


class FIDQuantize(Choice):
    round = "round"
    truncate = "truncate"


class MissingWeights(Choice):
    skip = "skip"
    error = "error"


class ResumeMode(Choice):
    auto = "auto"  # continue from a checkpoint when the job directory holds one
    require = "require"  # a checkpoint must be there (an error names the missing file)
    never = "never"  # start over, discarding a checkpoint


class LoggerBackend(Choice):
    none = "none"
    wandb = "wandb"


# Network files the metrics read; metric.weights.<key>=<file> overrides the default location.
METRIC_WEIGHT_KEYS = ("alexnet", "lpips_alex", "inception", "vgg16", "lpips_vgg", "dists", "clip", "probe")


@dataclass
class ModelConfig:
    """Where a VAE's weights come from and how to run it."""

    name: str = "???"
    loader: ModelLoader = ModelLoader.diffusers
    repo: str | None = None  # hub model repo, e.g. BiliSakura/VAEs
    subfolder: str | None = None
    path: str | None = None  # local directory; wins over repo
    revision: str | None = None
    upstream_repo: str | None = None  # the original publisher, for provenance
    upstream_subfolder: str | None = None
    arch: str | None = None  # shipped architecture config (vaes4rs/models/configs/<arch>.json)
    variant: str | None = None  # tiny loader: taef2, ...
    dtype: DType = DType.auto
    allow_pickle: bool = False
    upcast_on_overflow: bool = False


@dataclass
class DegradeConfig:
    """Degradations applied to every input on the fly, seeded per image (experiments/degradation).

    Applied in the order haze, blur, down-then-up sampling, noise, JPEG; the defaults apply none.
    """

    haze_t: float = 1.0  # transmission t of I = J t + A (1 - t); 1: no haze
    haze_airlight: float = 1.0  # airlight A on [0, 1]
    blur_sigma: float = 0.0  # Gaussian blur, in pixels
    downsample: int = 1  # down- then up-sampling factor (bicubic)
    noise_sigma: float = 0.0  # Gaussian noise, standard deviation on the [0, 1] pixel scale
    jpeg_quality: int | None = None  # re-encode as JPEG at this quality (1-100)
    seed: int = 0

    @property
    def active(self) -> bool:
        return (
            self.haze_t < 1.0
            or self.blur_sigma > 0
            or self.downsample > 1
            or self.noise_sigma > 0
            or self.jpeg_quality is not None
        )


@dataclass
class DatasetConfig:
    """An image set read as class folders (hub snapshot or local directory)."""

    name: str = "???"
    source: DatasetSource = DatasetSource.folder
    repo: str | None = None  # hub dataset repo, e.g. blanchon/RESISC45
    revision: str | None = None
    archive: str | None = None  # a zip inside the hub repo to extract (UC Merced)
    subdir: str | None = None  # class folders live here, relative to the snapshot/extract
    root: str | None = None  # folder source: the directory holding class folders
    classes: list[str] | None = None
    limit_per_class: int | None = None
    resize: list[int] | None = None  # [H, W]; None keeps native size
    # Skip every file the pre-flight check or decoding finds bad (counted by reason in
    # metrics.json) instead of stopping before the work with the list of them.
    skip_corrupt: bool = False
    # Images with more pixels than this are refused before the work (memory grows with the
    # image: a 6000x6000 image needs several GB through an SD-class VAE); tile such scenes.
    max_pixels: int = 4096 * 4096
    # Processes decoding images; null: sized to the CPUs this process may use (data.loader_workers).
    num_workers: int | None = None
    degrade: DegradeConfig = field(default_factory=DegradeConfig)
    # Rasters (multi-band, 16-bit or float TIFF/GeoTIFF) and whole scenes.
    path: str | None = None  # scene: the raster file
    bands: list[int] | None = None  # 1-based, as GDAL counts; None: RGB/gray as stored (each: every band)
    band_mode: BandMode = BandMode.rgb
    stretch: Stretch = Stretch.none
    stretch_percentiles: list[float] = field(default_factory=lambda: [2.0, 98.0])
    stretch_scope: StretchScope = StretchScope.image
    tile: int = 512  # scene tiles (pixels) and their overlap
    overlap: int = 64
    blend: bool = True  # blend overlapping tiles with a smooth window (else: each pixel from one tile)


@dataclass
class MetricConfig:
    """A protocol: which definitions, on which range, with which latent policy (see conf/metric/)."""

    protocol: str = "paper"
    latent: LatentPolicy = LatentPolicy.sample
    seed: int = 42
    # Ground truth cast to the model dtype before scoring (the study) or kept in float32.
    gt_dtype: GroundTruthDType = GroundTruthDType.model
    # PSNR and SSIM; LPIPS always feeds its network [-1, 1].
    value_range: ValueRange = ValueRange.minus_one_one
    quantize: Quantize = Quantize.none  # how reconstructions become pixels before every metric
    # SSIM averaged over every pixel (reflect-padded) or over valid windows only.
    ssim_border: SSIMBorder = SSIMBorder.reflect
    pool_size: int = 64  # per-image metrics averaged per group of this many images; 1 = per-image mean
    bootstrap: int = 0  # resamples for a 95% CI of each per-image mean; 0 = none (needs pool_size=1)
    bootstrap_seed: int = 0
    psnr: bool = True
    ssim: bool = True
    lpips: bool = True  # LPIPS-AlexNet with the official v0.1 linear heads
    lpips_vgg: bool = False  # piq's LPIPS-VGG16
    ms_ssim: bool = False  # piq, on [0, 1]; images must be at least 161x161
    dists: bool = False  # piq, on [0, 1]
    fid: bool = True  # originals vs reconstructions, InceptionV3 pool features (2048-d)
    kid: bool = False  # torch-fidelity's KID; only for sets under 2,048 images
    fid_resize: FIDResize = FIDResize.antialias  # how Inception's input reaches 299x299
    fid_quantize: FIDQuantize = FIDQuantize.truncate  # how [-1, 1] images become Inception's uint8 input
    kid_subsets: int = 100
    kid_subset_size: int = 1000  # capped at the number of images
    weights: dict[str, str | None] = field(default_factory=lambda: dict.fromkeys(METRIC_WEIGHT_KEYS))
    # A metric network's file missing and not downloadable: "skip" warns (naming the file and where
    # to get it), leaves the metric out and records why; "error" stops the job with that message.
    missing_weights: MissingWeights = MissingWeights.skip
    reference: Reference = Reference.clean  # what reconstructions are scored against under dataset.degrade
    # CMMD (Jayasumana et al. 2024): CLIP ViT-L/14-336 embeddings, RBF sigma 10, MMD^2 x 1000.
    cmmd: bool = False
    # Frozen-backbone probe: a timm model name (e.g. resnet50); classes fit on originals' features.
    probe: str | None = None
    probe_classifier: ProbeClassifier = ProbeClassifier.linear
    probe_train_fraction: float = 0.5  # of each class's images, seeded split
    probe_seed: int = 0


@dataclass
class LoggerConfig:
    backend: LoggerBackend = LoggerBackend.none
    project: str = "vaes4rs"
    entity: str | None = None
    mode: str = "offline"  # offline | online | disabled; WANDB_MODE wins when set
    tags: list[str] = field(default_factory=list)


@dataclass
class RunSettings:
    device: Device = Device.auto
    batch_size: int = 64
    n_samples: int = 8  # images shown in samples.png
    experiment: str = "default"
    progress: bool = True
    # Batches between checkpoints (running metric state beside per_image.csv); 0: about every
    # CHECKPOINT_SECONDS of work. Rerunning the command on the directory resumes from the last one.
    checkpoint_every: int = 0
    resume: ResumeMode = ResumeMode.auto
    skip_finished: bool = False  # a job whose complete metrics.json matches its config is skipped
    # torch.compile of the VAE's encoder and decoder (static shapes, channels_last) and of the metric
    # networks: faster on a GPU after a compilation per image size; results move at bf16 rounding
    # level (experiments/throughput); tables say which results were compiled.
    compile: bool = False
    # Write every reconstruction as a lossless PNG in the source's class layout (+ a card).
    save_reconstructions: bool = False
    # Host memory for the reference images' Inception features, kept for the sweep's next jobs on
    # the same dataset (FID's originals then pass Inception once per sweep, not once per model); 0: off.
    feature_cache_mb: int = 1024


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    metric: MetricConfig = field(default_factory=MetricConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    run: RunSettings = field(default_factory=RunSettings)


def _check_metric(metric: MetricConfig) -> None:
    """The metric group's bounds (kept apart so validate() stays a flat list)."""
    unknown = sorted(set(metric.weights) - set(METRIC_WEIGHT_KEYS))
    if unknown:
        raise ConfigError(f"metric.weights: unknown key(s) {unknown}; valid: {', '.join(METRIC_WEIGHT_KEYS)}")
    if metric.bootstrap < 0:
        raise ConfigError(f"metric.bootstrap must be >= 0, got {metric.bootstrap}")
    if metric.bootstrap and metric.pool_size != 1:
        raise ConfigError(
            "metric.bootstrap gives a CI of the per-image mean, so it needs metric.pool_size=1 "
            f"(got {metric.pool_size}); set metric.bootstrap=0 to keep group pooling"
        )
    if metric.kid_subsets < 1 or metric.kid_subset_size < 2:
        raise ConfigError("metric.kid_subsets must be >= 1 and metric.kid_subset_size >= 2")


def _check_dataset_extras(dataset: DatasetConfig) -> None:
    """Bounds of the degradation, raster and scene settings."""
    degrade = dataset.degrade
    if not 0.0 < degrade.haze_t <= 1.0 or not 0.0 <= degrade.haze_airlight <= 1.0:
        raise ConfigError(
            "dataset.degrade.haze_t must be in (0, 1] and haze_airlight in [0, 1], got "
            f"{degrade.haze_t} and {degrade.haze_airlight}"
        )
    if degrade.blur_sigma < 0 or degrade.noise_sigma < 0 or degrade.downsample < 1:
        raise ConfigError(
            "dataset.degrade: blur_sigma and noise_sigma must be >= 0 and downsample >= 1, got "
            f"{degrade.blur_sigma}, {degrade.noise_sigma}, {degrade.downsample}"
        )
    if degrade.jpeg_quality is not None and not 1 <= degrade.jpeg_quality <= 100:
        raise ConfigError(f"dataset.degrade.jpeg_quality must be 1..100 or null, got {degrade.jpeg_quality}")
    if dataset.bands is not None and (not dataset.bands or min(dataset.bands) < 1):
        raise ConfigError(f"dataset.bands are 1-based band numbers (as GDAL counts), got {dataset.bands}")
    if dataset.bands is not None and dataset.band_mode == "rgb" and len(dataset.bands) not in (1, 3):
        raise ConfigError(
            f"dataset.bands={dataset.bands}: band_mode=rgb takes 1 band (gray) or 3 (as R, G, B); "
            "for every band alone use dataset.band_mode=each"
        )
    low, high = (dataset.stretch_percentiles + [None, None])[:2]
    if len(dataset.stretch_percentiles) != 2 or not 0 <= low < high <= 100:
        raise ConfigError(
            f"dataset.stretch_percentiles must be [low, high] with 0 <= low < high <= 100, "
            f"got {dataset.stretch_percentiles}"
        )
    if dataset.tile < 1 or not 0 <= 2 * dataset.overlap < dataset.tile:
        raise ConfigError(
            f"dataset.tile must be positive and dataset.overlap in [0, tile/2), got "
            f"tile={dataset.tile}, overlap={dataset.overlap}"
        )


def unknown_keys(cfg: DictConfig, schema: type, prefix: str = "") -> list[str]:
    """Keys of ``cfg`` the schema does not have, with a suggestion each.

    Hydra's ``+key=value`` adds a key that the schema merge then drops without a word, so a
    misspelt ``+run.bach_size=4`` would run with the default batch size.
    """
    fields = {f.name: f for f in dataclasses.fields(schema)}
    problems = []
    for key in cfg:
        path = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            problems.append(f"unknown key {path}{hint}; valid keys: {', '.join(fields)}")
            continue
        child_type = fields[key].type
        child_type = typing.get_type_hints(schema)[key] if isinstance(child_type, str) else child_type
        if dataclasses.is_dataclass(child_type) and isinstance(cfg[key], DictConfig):
            problems.extend(unknown_keys(cfg[key], child_type, f"{path}."))
    return problems


def _check_positive(key: str, value: int | None, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if value is None or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value}")


def validate(cfg: DictConfig) -> RunConfig:
    """Merge the composed config into the schema (types and choices) and check what types cannot."""
    problems = unknown_keys(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), RunConfig)
    if problems:
        raise ConfigError("; ".join(problems))
    merged = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
    run_cfg: RunConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    model, dataset, metric = run_cfg.model, run_cfg.dataset, run_cfg.metric
    _check_metric(metric)
    if model.loader == "diffusers" and not (model.path or model.repo):
        raise ConfigError(f"model '{model.name}': set model.path=<dir> or model.repo=<hub id>")
    if dataset.source == "folder" and not dataset.root:
        raise ConfigError("dataset=folder needs dataset.root=<dir with one sub-folder per class>")
    if dataset.source == "latents" and not dataset.root:
        raise ConfigError("dataset=latents needs dataset.root=<latent directory written by vaes4rs.encode>")
    if dataset.source == "scene" and not dataset.path:
        raise ConfigError("dataset=scene needs dataset.path=<raster file, e.g. a GeoTIFF>")
    _check_dataset_extras(dataset)
    if dataset.source == "latents" and dataset.degrade.active:
        raise ConfigError("dataset.degrade applies to images, not to stored latents (dataset=latents)")
    if not 0.0 < metric.probe_train_fraction < 1.0:
        raise ConfigError(f"metric.probe_train_fraction must be in (0, 1), got {metric.probe_train_fraction}")
    if dataset.source == "hub" and not dataset.repo:
        raise ConfigError(f"dataset '{dataset.name}': source=hub needs dataset.repo")
    if dataset.resize is not None and (len(dataset.resize) != 2 or min(dataset.resize) < 1):
        raise ConfigError(f"dataset.resize must be [H, W] with positive sides, got {dataset.resize}")
    _check_positive("dataset.limit_per_class", dataset.limit_per_class)
    _check_positive("dataset.max_pixels", dataset.max_pixels, allow_none=False)
    if dataset.num_workers is not None and dataset.num_workers < 0:
        raise ConfigError(f"dataset.num_workers must be >= 0, got {dataset.num_workers}")
    if dataset.classes is not None and not dataset.classes:
        raise ConfigError("dataset.classes is an empty list; leave it unset (null) to use every class")
    _check_positive("metric.pool_size", metric.pool_size, allow_none=False)
    _check_positive("run.batch_size", run_cfg.run.batch_size, allow_none=False)
    if run_cfg.run.checkpoint_every < 0:
        raise ConfigError(f"run.checkpoint_every must be >= 0, got {run_cfg.run.checkpoint_every}")
    if run_cfg.run.feature_cache_mb < 0:
        raise ConfigError(f"run.feature_cache_mb must be >= 0 (0: off), got {run_cfg.run.feature_cache_mb}")
    if run_cfg.run.n_samples < 0:
        raise ConfigError(f"run.n_samples must be >= 0, got {run_cfg.run.n_samples}")
    return run_cfg


def folder_name(path: str | None, subfolder: str | None = None) -> str:
    """Default label of a local model or dataset: its folder's name (used by a resolver)."""
    if not path:
        return "???"
    folder = Path(path).expanduser() / (subfolder or "")
    return folder.resolve().name


def register_configs() -> None:
    """Make the schema and resolvers known to Hydra before it composes ``conf/``.

    ``base_config`` (first in conf/config.yaml's defaults) types every group, so
    ``dataset.num_workers=0`` works although no YAML names it and a typo fails at once;
    ``${vaes4rs.folder_name:${model.path},${model.subfolder}}`` labels local models and
    folders by name.
    """
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_config", node=RunConfig)
    OmegaConf.register_new_resolver("vaes4rs.folder_name", folder_name, replace=True)
