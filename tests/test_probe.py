"""The downstream probe: split, classifiers and accuracies on features whose answers are known by
construction, and the suite's features against timm's preprocessing done by hand, through a tiny
timm network (test_resnet.r160_in1k) planted in a temporary hub cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import read_per_image
from tests.test_latents_run import run_in_process, run_overrides
from tests.timm_weights import offline_cache, one_thread, plant_timm
from vaes4rs import files, preflight
from vaes4rs.config import MetricConfig, validate
from vaes4rs.errors import ConfigError
from vaes4rs.metrics import probe, weights
from vaes4rs.metrics.suite import MetricSuite

CPU = torch.device("cpu")
BACKBONE = "test_resnet.r160_in1k"


def probe_config(**changes: object) -> MetricConfig:
    settings = dict(psnr=False, ssim=False, lpips=False, fid=False, probe=BACKBONE, probe_classifier="knn")
    return MetricConfig(**{**settings, **changes})


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    yield from one_thread()


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[nn.Module]:
    """An offline hub cache with a random test_resnet; yields that model as a pooled-feature extractor."""
    cache = tmp_path_factory.mktemp("hub")
    model = plant_timm(cache, BACKBONE)
    model.reset_classifier(0)  # what num_classes=0 builds: the pooled features
    for _ in offline_cache(cache):
        yield model


def test_split_takes_a_seeded_share_of_each_class():
    labels = ["a"] * 5 + ["b"] * 2 + ["c"] + ["d"] * 10
    # round half up of fraction x n, at least 1 and at most n - 1 (a lone image only trains)
    for fraction, expected in ((0.5, dict(a=3, b=1, c=1, d=5)), (0.7, dict(a=4, b=1, c=1, d=7))):
        train = probe.split(labels, fraction, seed=0)
        assert {c: int(train[np.array(labels) == c].sum()) for c in "abcd"} == expected
    assert {c: int(probe.split(labels, 0.01, 0)[np.array(labels) == c].sum()) for c in "abd"} == dict(
        a=1, b=1, d=1
    )
    assert {c: int(probe.split(labels, 0.99, 0)[np.array(labels) == c].sum()) for c in "abd"} == dict(
        a=4, b=1, d=9
    )
    again = probe.split(labels, 0.5, seed=0)
    assert np.array_equal(again, probe.split(labels, 0.5, seed=0))
    assert any(not np.array_equal(again, probe.split(labels, 0.5, seed=s)) for s in (1, 2, 3))
    # a class's draw depends on its own images and the seed only, not on the other classes
    alone = probe.split(labels[:5], 0.5, seed=0)
    assert np.array_equal(alone, again[:5])


def test_linear_probe_is_the_ridge_least_squares_solution():
    generator = torch.Generator().manual_seed(0)
    n, dim, n_classes = 40, 12, 3
    scale = torch.linspace(0.1, 30, dim)  # features of very different scales: standardisation matters
    features = torch.randn(n, dim, generator=generator) * scale + 5
    targets = torch.arange(n) % n_classes
    layer = probe.fit_linear(features, targets, n_classes)
    # the same objective as an augmented least-squares problem, solved by QR (torch.linalg.lstsq):
    # minimise mean ||z W^T + b - onehot||^2 + ridge ||W||^2 over [W, b]
    x = features.double()
    z = (x - x.mean(0)) / x.std(0, unbiased=False)
    onehot = nn.functional.one_hot(targets, n_classes).double()
    design = torch.cat(
        [
            torch.cat([z, torch.ones(n, 1, dtype=torch.float64)], 1) / n**0.5,
            torch.cat([probe.RIDGE**0.5 * torch.eye(dim), torch.zeros(dim, 1)], 1).double(),
        ]
    )
    target = torch.cat([onehot / n**0.5, torch.zeros(dim, n_classes, dtype=torch.float64)])
    solution = torch.linalg.lstsq(design, target).solution
    new = torch.randn(7, dim, generator=generator) * scale + 5
    znew = (new.double() - x.mean(0)) / x.std(0, unbiased=False)
    expected = znew @ solution[:dim] + solution[dim]
    torch.testing.assert_close(layer(new.double()), expected, rtol=1e-9, atol=1e-9)


def test_knn_is_the_weighted_vote_of_the_nearest_cosine_neighbours():
    generator = torch.Generator().manual_seed(2)
    train, test = torch.randn(30, 5, generator=generator), torch.randn(9, 5, generator=generator)
    targets = torch.randint(0, 4, (30,), generator=generator)
    for k in (1, 5, 20):
        got = probe.knn_predict(train, targets, test, 4, k=k)
        for i, query in enumerate(test):
            cosine = [float(query @ t / (query.norm() * t.norm())) for t in train]
            nearest = sorted(range(len(train)), key=lambda j: -cosine[j])[:k]
            votes = [sum(np.exp(cosine[j] / 0.07) for j in nearest if targets[j] == c) for c in range(4)]
            assert int(got[i]) == int(np.argmax(votes))


@pytest.mark.parametrize("classifier", ["linear", "knn"])
def test_scores_count_what_was_planted(classifier):
    """Well separated class clusters; reconstructions moved to another class's cluster where the test
    says, so every accuracy and drop is known by counting."""
    generator = torch.Generator().manual_seed(4)
    classes = ["field", "forest", "lake"]
    labels = [c for c in classes for _ in range(8)]
    centres = 10 * torch.eye(3, 6)
    real = centres[[classes.index(c) for c in labels]] + 0.1 * torch.randn(
        len(labels), 6, generator=generator
    )
    train = probe.split(labels, 0.5, seed=7)
    test = np.flatnonzero(~train)
    fake = real.clone()

    def move(i: int, to: str) -> None:
        fake[i] = real[i] - centres[classes.index(labels[i])] + centres[classes.index(to)]

    # held out: two forest and one lake reconstruction land in the field cluster
    for i in [i for i in test if labels[i] == "forest"][:2] + [i for i in test if labels[i] == "lake"][:1]:
        move(i, "field")
    # training reconstructions of field and forest swap clusters: a classifier fit on them calls
    # held-out field originals forest and forest ones field, and still gets lake right
    for i in np.flatnonzero(train):
        if labels[i] in ("field", "forest"):
            move(i, "forest" if labels[i] == "field" else "field")
    overall, per_class = probe.scores(real, fake, labels, classifier, 0.5, seed=7)
    n_test = len(test)
    held = {c: sum(labels[i] == c for i in test) for c in classes}
    assert overall["probe_acc"] == 1.0
    assert overall["probe_acc_recon"] == pytest.approx(1 - 3 / n_test)
    assert overall["probe_drop"] == pytest.approx(3 / n_test)
    assert overall["probe_acc_fit_recon"] == pytest.approx(held["lake"] / n_test)
    assert overall["probe_drop_fit_recon"] == pytest.approx(1 - held["lake"] / n_test)
    assert overall["probe_n_test"] == n_test and overall["probe_n_train"] == int(train.sum())
    assert per_class["forest"]["probe_acc_recon"] == pytest.approx(1 - 2 / held["forest"])
    assert per_class["lake"]["probe_acc_recon"] == pytest.approx(1 - 1 / held["lake"])
    assert per_class["field"]["probe_acc_recon"] == 1.0 and per_class["field"]["probe_acc_fit_recon"] == 0.0
    assert per_class["lake"]["probe_acc_fit_recon"] == 1.0
    assert {c: v["probe_n_test"] for c, v in per_class.items()} == held


@pytest.mark.parametrize("classifier", ["linear", "knn"])
def test_scores_with_two_classes_the_fewest_a_probe_takes(classifier):
    """Two clusters; two held-out reconstructions of "sea" moved into the "sand" cluster."""
    generator = torch.Generator().manual_seed(6)
    labels = ["sand"] * 4 + ["sea"] * 6
    centres = 10 * torch.eye(2, 4)
    real = centres[[int(c == "sea") for c in labels]] + 0.1 * torch.randn(len(labels), 4, generator=generator)
    train = probe.split(labels, 0.5, seed=3)  # 2 of sand and 3 of sea train
    held_sea = [i for i in np.flatnonzero(~train) if labels[i] == "sea"]
    fake = real.clone()
    fake[held_sea[:2]] += centres[0] - centres[1]
    overall, per_class = probe.scores(real, fake, labels, classifier, 0.5, seed=3)
    assert overall["probe_n_test"] == 5 and overall["probe_n_train"] == 5
    assert overall["probe_acc"] == 1.0 and overall["probe_acc_fit_recon"] == 1.0
    assert overall["probe_acc_recon"] == pytest.approx(3 / 5)
    assert (
        per_class["sea"]["probe_acc_recon"] == pytest.approx(1 / 3)
        and per_class["sand"]["probe_acc_recon"] == 1.0
    )


def test_a_class_with_nothing_held_out_has_no_per_class_row():
    """A class of one image only trains: it has no held-out image to score, so no per-class row."""
    generator = torch.Generator().manual_seed(8)
    labels = ["a"] * 4 + ["b"] * 4 + ["c"]
    real = torch.randn(len(labels), 5, generator=generator)
    overall, per_class = probe.scores(real, real, labels, "knn", 0.5, seed=0)
    assert set(per_class) == {"a", "b"} and overall["probe_n_test"] == 4 and overall["probe_n_train"] == 5


def test_scores_refuse_one_class_or_nothing_to_hold_out_with_the_reason():
    features = torch.randn(3, 4)
    with pytest.raises(probe.ProbeUnavailable, match=r"^a probe needs at least 2 classes, got 1$"):
        probe.scores(features, features, ["a", "a", "a"], "linear", 0.5, 0)
    with pytest.raises(
        probe.ProbeUnavailable, match=r"^a probe needs a held-out image: every class has a single image$"
    ):
        probe.scores(features, features, ["a", "b", "c"], "linear", 0.5, 0)
    with pytest.raises(ValueError, match=r"^metric.probe_classifier=svm: valid: linear, knn$"):
        probe.scores(features, features, ["a", "a", "b"], "svm", 0.5, 0)


def test_linear_probe_layer_is_frozen_float64_with_a_score_for_every_class():
    features = torch.randn(8, 3)
    layer = probe.fit_linear(features, torch.arange(8) % 2, 3)  # no training image of class 2
    assert layer.weight.dtype == torch.float64 and not layer.weight.requires_grad
    assert not layer.bias.requires_grad
    # class 2's one-hot column is all zeros: its least-squares score is exactly 0
    assert layer.weight.shape == (3, 3) and torch.equal(
        layer(features.double())[:, 2], torch.zeros(8, dtype=torch.float64)
    )


def test_linear_and_knn_probes_work_on_the_features_device():
    """The meta device stands in for an accelerator: every tensor of the fit must live there."""
    features = torch.randn(8, 3, device="meta")
    targets = torch.zeros(8, dtype=torch.long, device="meta")
    layer = probe.fit_linear(features, targets, 2)
    assert layer.weight.device.type == "meta" and layer.bias.device.type == "meta"
    assert probe.knn_predict(features, targets, torch.randn(4, 3, device="meta"), 2).device.type == "meta"


def test_missing_probe_weights_message_names_the_setting_and_the_switch(tmp_path: Path):
    for _ in offline_cache(tmp_path):  # an empty cache, offline
        with pytest.raises(weights.MissingWeightsError) as err:
            probe.load_probe(BACKBONE, {}, CPU)
    message = str(err.value)
    assert message.startswith(f"the probe (metric.probe={BACKBONE}) needs {BACKBONE}'s pretrained weights")
    assert message.endswith(
        "set metric.weights.probe=<file> (a timm state dict, .safetensors or .pth); "
        "or switch it off with metric.probe=null"
    )
    with pytest.raises(ConfigError, match=r"^metric\.probe=resnet5: not a timm model"):
        probe.load_probe("resnet5", {}, CPU)


def test_load_probe_passes_timm_arguments_and_puts_the_network_on_the_device_asked(planted):
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    pooled_max = probe.load_probe(BACKBONE, {}, CPU, global_pool="max")
    assert pooled_max.model.num_classes == 0 and not pooled_max.unit
    with torch.no_grad():
        expected = planted.forward_features(preprocess_by_hand(images)).amax(dim=(2, 3))
    # the same float32 convolutions on the same pixels: float32 rounding only
    torch.testing.assert_close(pooled_max(images), expected, rtol=1e-4, atol=1e-5)
    on_meta = probe.load_probe(BACKBONE, {}, torch.device("meta"))
    assert {p.device.type for p in on_meta.model.parameters()} == {"meta"}


def preprocess_by_hand(images: torch.Tensor) -> torch.Tensor:
    """test_resnet.r160_in1k's eval transform: shorter side to floor(160 / 0.95) = 168 (bilinear,
    antialiased), centre crop 160, mean 0.5 and std 0.5."""
    pixels = ((images + 1) / 2).clamp(0, 1)
    resized = nn.functional.interpolate(pixels, size=(168, 168), mode="bilinear", antialias=True)
    return (resized[..., 4:164, 4:164] - 0.5) / 0.5


def image_batches() -> list[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """Three classes of 4 images (32x32) with a class-specific tint; reconstructions blurred and noisy."""
    generator = torch.Generator().manual_seed(5)
    labels = [c for c in ("beach", "forest", "harbor") for _ in range(4)]
    tint = {"beach": (0.6, 0.4, -0.2), "forest": (-0.5, 0.3, -0.4), "harbor": (-0.2, -0.1, 0.6)}
    base = torch.tensor([tint[c] for c in labels]).view(-1, 3, 1, 1)
    originals = (base + 0.4 * torch.rand(len(labels), 3, 32, 32, generator=generator)).clamp(-1, 1)
    recon = nn.functional.avg_pool2d(originals, 5, 1, 2) + 0.2 * torch.randn(
        originals.shape, generator=generator
    )
    order = [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]  # batches mixing classes
    return [
        (recon[order[i : i + 3]], originals[order[i : i + 3]], [labels[j] for j in order[i : i + 3]])
        for i in range(0, len(order), 3)
    ]


def run_suite(batches, **changes) -> MetricSuite:
    metric_suite = MetricSuite(probe_config(**changes), CPU, torch.float32)
    for recon, original, labels in batches:
        metric_suite.update(recon, original, labels=labels)
    return metric_suite


@pytest.mark.parametrize("classifier", ["knn", "linear"])
def test_suite_probe_is_the_probe_of_timm_features(planted, classifier):
    batches = image_batches()
    metric_suite = run_suite(batches, probe_classifier=classifier)
    labels = [label for _, _, batch in batches for label in batch]
    with torch.no_grad():
        real = planted(preprocess_by_hand(torch.cat([o for _, o, _ in batches])))
        fake = planted(preprocess_by_hand(torch.cat([r for r, _, _ in batches])))
    kept = metric_suite.metrics[0].kept
    torch.testing.assert_close(kept.real(), real, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(kept.fake(), fake, rtol=1e-4, atol=1e-5)
    values = metric_suite.finalize({"class": np.array(labels)})
    overall, per_class = probe.scores(real, fake, labels, classifier, 0.5, 0)
    assert values == pytest.approx(overall)
    for label, expected in per_class.items():
        assert metric_suite.summarise({"class": np.array([label] * 4)}) == pytest.approx(expected)
    definition = metric_suite.protocol()["definitions"]["probe"]
    assert BACKBONE in definition and classifier in definition


@pytest.mark.parametrize(
    ("classifier", "text"),
    [
        ("knn", "k=20 cosine neighbours, votes exp(sim/0.07)"),
        ("linear", "ridge regression onto one-hot classes, standardised features, penalty 0.01"),
    ],
)
def test_the_recorded_probe_definition_says_how_the_numbers_were_made(planted, classifier, text):
    cfg = probe_config(probe_classifier=classifier, probe_train_fraction=0.7, probe_seed=3)
    definition = MetricSuite(cfg, CPU, torch.float32).protocol()["definitions"]["probe"]
    assert definition == (
        f"timm {BACKBONE} pooled features (num_classes=0) after its eval preprocessing; "
        f"{classifier} classifier ({text}) fit on a seeded split (0.7 of each class, seed 3) of the "
        "originals (probe_acc, probe_acc_recon) or of the reconstructions (probe_acc_fit_recon), "
        "scored on the held-out images; accuracies are fractions, drops are probe_acc minus the other"
    )


def test_the_suite_probe_passes_its_timm_arguments(planted, monkeypatch):
    """Probe.probe_overrides (the tests' hook for stand-in networks) reach timm.create_model."""
    from vaes4rs.metrics import suite

    monkeypatch.setattr(suite.Probe, "probe_overrides", {"global_pool": "max"})
    recon, original, labels = image_batches()[0]
    metric_suite = run_suite([(recon, original, labels)])
    with torch.no_grad():
        expected = planted.forward_features(preprocess_by_hand(original)).amax(dim=(2, 3))
    # the same float32 convolutions on the same pixels: float32 rounding only
    torch.testing.assert_close(metric_suite.metrics[0].kept.real(), expected, rtol=1e-4, atol=1e-5)


def test_a_probe_that_scored_nothing_says_so_and_loads_on_the_device_asked(planted):
    empty = MetricSuite(probe_config(), CPU, torch.float32)
    assert empty.summarise({"class": np.array(["beach"])}) == {}  # nothing per class before finalize
    recon, original, _ = image_batches()[0]
    with pytest.raises(
        ValueError,
        match=r"^metric\.probe needs each image's class: MetricSuite\.update\(\.\.\., labels=\.\.\.\)$",
    ):
        empty.update(recon, original)
    assert empty.finalize({"class": np.array([])}) == {}
    assert empty.not_computed() == {"probe": "no image was scored"}
    on_meta = MetricSuite(probe_config(), torch.device("meta"), torch.float32)  # stands in for an accelerator
    assert {p.device.type for p in on_meta.metrics[0].net.model.parameters()} == {"meta"}


def test_probe_state_survives_a_checkpoint_and_merges_across_processes(planted, tmp_path: Path):
    batches = image_batches()
    labels = {"class": np.array([label for _, _, batch in batches for label in batch])}
    uninterrupted = run_suite(batches)
    whole = uninterrupted.finalize(labels)
    first = run_suite(batches[:2])
    torch.save(first.state_dict(), tmp_path / "checkpoint.pt")
    resumed = MetricSuite(probe_config(), CPU, torch.float32)
    resumed.load_state_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=False))
    for recon, original, batch_labels in batches[2:]:
        resumed.update(recon, original, labels=batch_labels)
    assert resumed.finalize(labels) == whole
    ranks = [run_suite(batches[0::2]), run_suite(batches[1::2])]
    merged = MetricSuite(probe_config(), CPU, torch.float32)
    merged.merge_state_dicts([rank.state_dict() for rank in ranks], [[0, 2], [1, 3]])
    assert merged.finalize(labels) == whole
    for kept in (resumed.metrics[0].kept, merged.metrics[0].kept):  # the images in the order scored
        assert kept.labels() == uninterrupted.metrics[0].kept.labels()
        assert torch.equal(kept.real(), uninterrupted.metrics[0].kept.real())
        assert torch.equal(kept.fake(), uninterrupted.metrics[0].kept.fake())


def test_probe_needs_labels_two_classes_and_a_held_out_image(planted):
    recon, original, _ = image_batches()[0]
    with pytest.raises(ValueError, match="labels="):
        MetricSuite(probe_config(), CPU, torch.float32).update(recon, original)
    one_class = run_suite([(recon, original, ["beach"] * 3)])
    assert one_class.finalize({"class": np.array(["beach"] * 3)}) == {}
    assert one_class.not_computed()["probe"] == "a probe needs at least 2 classes, got 1"
    lone = run_suite([(recon[:2], original[:2], ["beach", "forest"])])
    assert lone.finalize({"class": np.array(["beach", "forest"])}) == {}
    assert "held-out image" in lone.not_computed()["probe"]


def test_an_unknown_probe_model_is_refused_with_suggestions(planted):
    with pytest.raises(ConfigError, match=r"metric.probe=resnet5: not a timm model.*did you mean.*resnet50"):
        MetricSuite(probe_config(probe="resnet5"), CPU, torch.float32)


def test_missing_probe_weights_name_the_model_and_every_way_out(planted, tmp_path: Path):
    for _ in offline_cache(tmp_path):  # an empty cache, offline
        skipped = MetricSuite(probe_config(), CPU, torch.float32)
        reason = skipped.not_computed()["probe"]
        for part in (
            BACKBONE,
            "hf download timm/test_resnet.r160_in1k",
            "metric.weights.probe=<file>",
            "metric.probe=null",
        ):
            assert part in reason
        with pytest.raises(weights.MissingWeightsError, match="hub is offline"):
            MetricSuite(probe_config(missing_weights="error"), CPU, torch.float32)
        file = tmp_path / "backbone.pt"
        torch.save(planted.state_dict(), file)
        from_file = run_suite(image_batches()[:1], weights={"probe": str(file)})
        torch.testing.assert_close(
            from_file.metrics[0].kept.real(),
            planted(preprocess_by_hand(image_batches()[0][1])),
            rtol=1e-4,
            atol=1e-5,
        )


def test_the_run_loop_gives_the_probe_each_image_class(
    planted, compose_conf, tiny_models: Path, image_folder, tmp_path
):
    """Through evaluate: labels reach the probe (of the reconstructions and of the degraded input),
    per_class.csv carries the probe's columns, and a typo in metric.probe stops the pre-flight."""
    overrides = run_overrides(
        tiny_models / "SD21-VAE",
        "dataset=folder",
        f"dataset.root={image_folder}",
        f"metric.probe={BACKBONE}",
        "metric.probe_classifier=knn",
        "dataset.degrade.noise_sigma=0.1",
    )
    payload = run_in_process(compose_conf, tmp_path / "run", overrides)
    metrics, baseline = payload["metrics"], payload["baseline"]["metrics"]
    assert metrics["probe_n_train"] + metrics["probe_n_test"] == 6
    assert 0.0 <= metrics["probe_acc"] <= 1.0 and 0.0 <= baseline["probe_acc_recon"] <= 1.0
    assert metrics["probe_drop"] == pytest.approx(metrics["probe_acc"] - metrics["probe_acc_recon"])
    assert len(read_per_image(tmp_path / "run" / files.PER_IMAGE_FILE)["psnr"]) == 6
    header = (tmp_path / "run" / files.PER_CLASS_FILE).read_text().splitlines()[0].split(",")
    assert "probe_acc_recon" in header and "input_probe_acc_recon" in header
    typo = validate(compose_conf([*overrides, "metric.probe=resnet5O"]))
    with pytest.raises(preflight.PreflightError, match="metric.probe=resnet5O: not a timm model"):
        preflight.check(typo)


def test_a_second_suite_reuses_the_first_suites_network_and_scores_the_same(planted):
    """The degraded-input baseline is a second suite: it takes the first one's loaded network."""
    cfg = probe_config()
    first = MetricSuite(cfg, CPU, torch.float32)
    second = MetricSuite(cfg, CPU, torch.float32, networks=first.networks)
    alone = MetricSuite(cfg, CPU, torch.float32)
    assert second.metrics[0].net is first.metrics[0].net and alone.metrics[0].net is not first.metrics[0].net
    for recon, original, labels in image_batches():
        second.update(recon, original, labels=labels)
        alone.update(recon, original, labels=labels)
    assert torch.equal(second.metrics[0].kept.real(), alone.metrics[0].kept.real())
    assert torch.equal(second.metrics[0].kept.fake(), alone.metrics[0].kept.fake())
