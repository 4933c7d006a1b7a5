"""The paper table's columns: per-model stats, then each metric (one column per dataset).

``METRIC_COLUMNS`` (the study's, always shown) and ``EXTRA_COLUMNS`` (shown when a job has
them: CMMD and the downstream probe) are the one place that names the table's metrics: their
keys are the keys of metrics.json, the table's CSV columns and the W&B summary keys, so a
number can be followed from a job to the paper without a rename. A module of its own because
the table, its renderers, the published numbers and the HTML report's per-class charts all
read it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricColumn:
    """A metric of the table: ``key`` in metrics.json, header label, direction, printed decimals."""

    key: str
    label: str
    higher_is_better: bool
    decimals: int
    # The metric behind the key: its switch (metric.<switch>) and its key in protocol.not_computed.
    source: str = ""

    @property
    def switch(self) -> str:
        return self.source or self.key


METRIC_COLUMNS: tuple[MetricColumn, ...] = (
    MetricColumn("psnr", "PSNR", higher_is_better=True, decimals=2),
    MetricColumn("ssim", "SSIM", higher_is_better=True, decimals=3),
    MetricColumn("lpips", "LPIPS", higher_is_better=False, decimals=3),
    MetricColumn("fid", "FID", higher_is_better=False, decimals=2),
)
# Not in the study: a column appears when a job has the value or tried and recorded why not.
EXTRA_COLUMNS: tuple[MetricColumn, ...] = (
    MetricColumn("cmmd", "CMMD", higher_is_better=False, decimals=3),
    MetricColumn("probe_acc_recon", "Probe acc. recon", higher_is_better=True, decimals=3, source="probe"),
    MetricColumn("probe_drop", "Probe drop", higher_is_better=False, decimals=3, source="probe"),
    MetricColumn("probe_acc_fit_recon", "Probe acc. fit on recon", True, decimals=3, source="probe"),
)


@dataclass(frozen=True)
class StatColumn:
    """A per-model column read from metrics.json's model_stats (the same for every dataset)."""

    key: str
    label: str
    decimals: int


STAT_COLUMNS: tuple[StatColumn, ...] = (
    StatColumn("gflops", "GFLOPs", 2),
    StatColumn("spatial_ratio", "Ratio", 0),
    StatColumn("latent_channels", "Channels", 0),
)
GFLOPS_SIDE = 256  # the study counts one encode+decode of a 1x3x256x256 input
GFLOPS_SIZE = f"{GFLOPS_SIDE}x{GFLOPS_SIDE}"  # the key of model_stats["gflops"] the table reads
