"""``run.compile`` compiles the metric networks too: the same numbers, once per job, and never mixed.

A counting backend stands in for Inductor (seconds instead of minutes on a CPU): it records each
graph Dynamo hands it and runs the graph as traced, so the compiled path is really taken.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vaes4rs.config import MetricConfig
from vaes4rs.metrics.reference_cache import REFERENCE_FEATURES, ReferenceBatch
from vaes4rs.metrics.suite import InceptionDistances, MetricSuite, compile_networks
from vaes4rs.report.collect import read_result

CPU = torch.device("cpu")


class CountingBackend:
    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list) -> object:
        self.graphs += 1
        return graph.forward


class StandIn(torch.nn.Module):
    """Inception's output shape from uint8 images, cheaply."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3 * 32 * 32, 2048)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(images.float().flatten(1))


def pairs(n: int = 2, side: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    original = torch.rand(n, 3, side, side, generator=generator) * 2 - 1
    recon = (original + 0.1 * torch.randn(n, 3, side, side, generator=generator)).clamp(-1, 1)
    return recon, original


def test_compiled_lpips_and_inception_score_as_eager_and_are_compiled_once_per_job(
    planted_home: Path,
) -> None:
    cfg = MetricConfig(psnr=True, ssim=False, lpips=True, fid=True, kid=False)
    recon, original = pairs()
    eager = MetricSuite(cfg, CPU, torch.float32)
    expected = eager.update(recon, original)

    backend = CountingBackend()
    compiled = MetricSuite(cfg, CPU, torch.float32, compile_backend=backend)
    got = compiled.update(recon, original)
    assert backend.graphs == 2  # LPIPS-AlexNet and InceptionV3, one graph each
    assert got.keys() == expected.keys() == {"mse", "psnr", "lpips"}
    # the traced graphs run the same kernels as eager here (Inductor's would round differently)
    assert all((got[key] == expected[key]).all() for key in got)
    inception = [m for m in compiled.metrics if isinstance(m, InceptionDistances)][0]
    eager_inception = [m for m in eager.metrics if isinstance(m, InceptionDistances)][0]
    assert torch.equal(inception.fake.total, eager_inception.fake.total)

    # the degraded input's suite shares the networks: they are not compiled a second time
    baseline = MetricSuite(cfg, CPU, torch.float32, compiled.networks, compile_backend=backend)
    baseline.update(recon, original)
    assert backend.graphs == 2
    compile_networks(compiled.networks, backend)
    assert backend.graphs == 2


def test_features_of_compiled_networks_are_kept_apart_from_eager_ones(
    planted_home: Path, tmp_path: Path
) -> None:
    """FID's reference features computed by a compiled Inception differ at float32 rounding:
    a compiled job never takes an eager job's features, nor the other way round."""
    REFERENCE_FEATURES.clear()
    cfg = MetricConfig(psnr=False, ssim=False, lpips=False, fid=True, kid=False)
    recon, original = pairs()
    path = tmp_path / "a.png"
    path.write_bytes(b"stand-in: only the file's identity is read")
    source = ReferenceBatch.of(
        "dataset config", [("c/a.png", path), ("c/b.png", path)], "clean", original.shape
    )
    stand_in = StandIn()  # what is looked up is under test, not Inception's values
    seen: list[int] = []
    stand_in.register_forward_hook(lambda _module, args, _out: seen.append(len(args[0])))

    def originals_seen(compile_backend) -> int:
        networks = {InceptionDistances.__name__: stand_in}
        suite = MetricSuite(
            cfg, CPU, torch.float32, networks, feature_cache_mib=64, compile_backend=compile_backend
        )
        seen.clear()
        suite.update(recon, original, source=source)
        return sum(seen) - len(recon)

    try:
        assert originals_seen(None) == 2  # eager: computed and kept
        assert originals_seen(CountingBackend()) == 2  # compiled: not the eager features
        assert originals_seen(CountingBackend()) == 0  # the compiled job's own
        assert originals_seen(None) == 0
    finally:
        REFERENCE_FEATURES.clear()


def test_a_result_says_whether_it_was_compiled(tmp_path: Path) -> None:
    payload = {"model": "sd21", "dataset": "aid", "protocol": {"name": "paper"}, "metrics": {"psnr": 30.0}}
    for compiled in (True, False):
        path = tmp_path / str(compiled) / "metrics.json"
        path.parent.mkdir()
        path.write_text(json.dumps({**payload, "timing": {"seconds": 1.0, "compiled": compiled}}))
        assert read_result(path).compiled is compiled
    path = tmp_path / "old" / "metrics.json"  # written before the flag existed: eager
    path.parent.mkdir()
    path.write_text(json.dumps(payload))
    assert read_result(path).compiled is False


def test_the_metric_compile_benchmark_prints_each_network(planted_home: Path, tmp_path: Path, capsys) -> None:
    from benchmarks import metric_compile
    from tests.conftest import write_rgb

    for i in range(2):
        write_rgb(tmp_path / "c" / f"{i}.png", 32, 32, seed=i)
    metric_compile.main(["--images", str(tmp_path), "--n", "2", "--device", "cpu", "--backend", "eager"])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("2 images of (32, 32)")
    assert [line.split(":")[0] for line in printed[1:]] == ["InceptionV3 (FID)", "LPIPS-AlexNet"]
    assert all(
        "max |compiled - eager| 0.00e+00" in line for line in printed[1:]
    )  # eager backend: same kernels
