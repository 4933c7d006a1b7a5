"""Where the metric networks' files come from (vaes4rs.metrics.weights), against the libraries' own
names: each default file is where torchvision, torch-fidelity, piq or torchmetrics keep it (their
URLs read from those packages here), downloads go through torch.hub with the publisher's hash
prefix, and every failure names the file, the setting and the switch that avoid it.
Downloads are replaced by stand-ins: nothing here touches the network."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from urllib.error import URLError

import pytest
import torch
from safetensors.torch import save_file

from tests.timm_weights import offline_cache
from vaes4rs.errors import ConfigError
from vaes4rs.metrics import weights


def library_urls() -> dict[str, str]:
    """The URL each library downloads its file from, read from the library."""
    import piq.perceptual
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
    from torchvision.models import AlexNet_Weights, VGG16_Weights

    return {
        "alexnet": AlexNet_Weights.IMAGENET1K_V1.url,
        "vgg16": VGG16_Weights.IMAGENET1K_V1.url,
        "inception": tf_inception.URL_INCEPTION_V3,
        "lpips_vgg": piq.perceptual.LPIPS._weights_url,
        "dists": piq.perceptual.DISTS._weights_url,
    }


@pytest.fixture()
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME, and a torch.hub download that fails if anything calls it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_download(*args, **kwargs):
        raise AssertionError(f"unexpected download {args}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path / "torch"


def how_to_supply(key: str, file_name: str, url: str, target: Path, used_by: str, switches: str) -> str:
    return (
        f"{used_by} needs {file_name}: download {url} to {target} "
        f"(the torch hub cache, $TORCH_HOME/hub/checkpoints) or set metric.weights.{key}=<file>; "
        f"or switch it off with {switches}"
    )


def test_default_files_are_where_the_libraries_keep_them(torch_home: Path):
    import torchmetrics.functional.image

    for key, url in library_urls().items():
        assert weights.WEIGHT_FILES[key].url == url
        assert weights.default_path(key) == torch_home / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    wheel = Path(torchmetrics.functional.image.__file__).parent / "lpips_models" / "alex.pth"
    assert weights.default_path("lpips_alex") == wheel


def test_a_cached_file_is_used_without_a_download(torch_home: Path):
    target = torch_home / "hub" / "checkpoints" / "vgg16-397923af.pth"
    target.parent.mkdir(parents=True)
    torch.save({"features.0.weight": torch.arange(6.0)}, target)
    assert weights.weight_path("vgg16", {}) == target
    assert weights.weight_path("vgg16", {"vgg16": ""}) == target  # an empty setting means the default
    state = weights.load_state("vgg16", {"vgg16": None})
    assert torch.equal(state["features.0.weight"], torch.arange(6.0))
    assert state["features.0.weight"].device.type == "cpu"


def test_an_explicit_file_wins_and_a_home_relative_one_is_expanded(
    torch_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("HOME", str(tmp_path))
    torch.save([torch.ones(2)], tmp_path / "mine.pt")
    assert weights.weight_path("lpips_vgg", {"lpips_vgg": "~/mine.pt"}) == tmp_path / "mine.pt"
    assert torch.equal(weights.load_state("lpips_vgg", {"lpips_vgg": "~/mine.pt"})[0], torch.ones(2))


def test_load_state_reads_tensors_only(torch_home: Path, tmp_path: Path):
    file = tmp_path / "pickled.pt"
    torch.save({"w": torch.ones(1), "code": SimpleNamespace(x=1)}, file)  # an arbitrary object
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        weights.load_state("dists", {"dists": str(file)})


def test_a_missing_explicit_file_names_the_setting_the_file_and_both_switches(
    torch_home: Path, tmp_path: Path
):
    given = str(tmp_path / "nowhere.pth")
    spec = weights.WEIGHT_FILES["vgg16"]
    expected = f"metric.weights.vgg16={given}: no such file. " + how_to_supply(
        "vgg16",
        spec.file_name,
        spec.url,
        Path(given),
        spec.used_by,
        "metric.lpips_vgg=false metric.dists=false",
    )
    with pytest.raises(weights.MissingWeightsError) as err:
        weights.weight_path("vgg16", {"vgg16": given})
    assert str(err.value) == expected


def test_a_cache_miss_downloads_into_the_cache_with_the_hash_prefix(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    calls = []

    def fake_download(url: str, dst: str, hash_prefix: str | None = None) -> None:
        calls.append((url, dst, hash_prefix))
        Path(dst).write_bytes(b"")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    urls = library_urls()
    checkpoints = torch_home / "hub" / "checkpoints"
    with caplog.at_level(logging.INFO, logger="vaes4rs.metrics.weights"):
        assert weights.weight_path("alexnet", {}) == checkpoints / "alexnet-owt-7be5be79.pth"
        # the folder exists now: a second file goes beside the first
        assert weights.weight_path("dists", {}) == checkpoints / "dists_weights.pt"
    assert calls == [
        (urls["alexnet"], str(checkpoints / "alexnet-owt-7be5be79.pth"), "7be5be79"),
        (urls["dists"], str(checkpoints / "dists_weights.pt"), None),  # piq states no hash
    ]
    assert f"downloading {urls['alexnet']} to {checkpoints / 'alexnet-owt-7be5be79.pth'}" in caplog.messages


@pytest.mark.parametrize("error", [URLError("no route"), OSError("disk full"), RuntimeError("bad hash")])
def test_a_failed_download_says_where_to_put_the_file(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch, error
):
    def failing(url: str, dst: str, hash_prefix: str | None = None) -> None:
        raise error

    monkeypatch.setattr(torch.hub, "download_url_to_file", failing)
    spec = weights.WEIGHT_FILES["inception"]
    target = torch_home / "hub" / "checkpoints" / spec.file_name
    expected = f"{target} not found and could not be downloaded ({error}). " + how_to_supply(
        "inception", spec.file_name, spec.url, target, spec.used_by, "metric.fid=false metric.kid=false"
    )
    with pytest.raises(weights.MissingWeightsError) as err:
        weights.weight_path("inception", {})
    assert str(err.value) == expected and err.value.__cause__ is error


def test_lpips_heads_missing_from_torchmetrics_are_not_downloaded(
    torch_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    packages = []

    def files(package: str) -> Path:
        packages.append(package)
        return tmp_path / "torchmetrics_image"

    monkeypatch.setattr(weights, "resources", SimpleNamespace(files=files))
    target = tmp_path / "torchmetrics_image" / "lpips_models" / "alex.pth"
    spec = weights.WEIGHT_FILES["lpips_alex"]
    expected = f"{target} is missing from the torchmetrics install. " + how_to_supply(
        "lpips_alex", "alex.pth", spec.url, target, spec.used_by, "metric.lpips=false"
    )
    with pytest.raises(weights.MissingWeightsError) as err:  # torch_home's stand-in fails on a download
        weights.weight_path("lpips_alex", {})
    assert str(err.value) == expected
    assert packages == ["torchmetrics.functional.image"]


def test_timm_sources_hub_repo_or_url():
    assert weights.timm_weights_source("resnet18.a1_in1k", "metric.probe") == (
        "the hub repo timm/resnet18.a1_in1k",
        "`hf download timm/resnet18.a1_in1k` (same HF_HOME)",
    )
    from timm.models import get_pretrained_cfg

    url = get_pretrained_cfg("gcvit_xxtiny.in1k").url  # a model timm fetches from a URL, not the hub
    assert url and not get_pretrained_cfg("gcvit_xxtiny.in1k").hf_hub_id
    assert weights.timm_weights_source("gcvit_xxtiny.in1k", "metric.probe") == (
        url,
        f"a download of {url} into {Path(torch.hub.get_dir()) / 'checkpoints'}",
    )


@pytest.mark.parametrize(
    ("name", "suggested"),
    [
        ("resnet5", True),
        ("resnet50.no_such_tag", True),  # a known architecture, an unknown tag
        ("clip_vit", True),  # its one match (test_vit) scores between 0.5 and difflib's default 0.6
        ("qqqqzzzzxxxx", False),  # nothing close
    ],
)
def test_timm_names_without_weights_are_config_errors(name: str, suggested: bool):
    import difflib

    import timm

    # the suggestions are difflib's three closest names, in its order
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.5)
    assert bool(close) == suggested
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    expected = (
        f"cmmd.CLIP_MODEL={name}: not a timm model with pretrained weights{hint}; e.g. resnet50, "
        "vit_small_patch14_dinov2.lvd142m (timm.list_models(pretrained=True) lists them all)"
    )
    with pytest.raises(ConfigError) as err:
        weights.timm_weights_source(name, "cmmd.CLIP_MODEL")
    assert str(err.value) == expected


TINY = "test_resnet.r160_in1k"
SUPPLY = (
    "set metric.weights.probe=<file> (a timm state dict, .safetensors or .pth); "
    "or switch it off with metric.probe=null"
)


def load(explicit: dict, **overrides) -> torch.nn.Module:
    return weights.load_timm(
        TINY,
        "probe",
        explicit,
        setting="metric.probe",
        used_by="the test",
        switch="metric.probe=null",
        **overrides,
    )


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(0)
    return timm.create_model(TINY, pretrained=False, num_classes=0).state_dict()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".ckpt"])
def test_load_timm_from_an_explicit_file(tiny_state, tmp_path: Path, suffix: str):
    file = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(tiny_state, file)
    elif suffix == ".pth":
        torch.save(tiny_state, file)
    else:  # a training checkpoint that nests the weights under "state_dict"
        torch.save({"state_dict": tiny_state, "epoch": torch.tensor(3)}, file)
    for _ in offline_cache(tmp_path / "empty"):
        model = load({"probe": str(file)}, num_classes=0)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, tiny_state[key]), key


def test_load_timm_errors_name_the_file_and_the_way_out(tiny_state, tmp_path: Path):
    missing = str(tmp_path / "nowhere.pt")
    with pytest.raises(weights.MissingWeightsError) as err:
        load({"probe": missing})
    assert str(err.value) == f"metric.weights.probe={missing}: no such file. the test needs {TINY}: {SUPPLY}"
    wrong = tmp_path / "wrong.pt"
    torch.save({"not_a_layer": torch.zeros(1)}, wrong)
    pickled = tmp_path / "pickled.pth"  # an arbitrary object besides the tensors: never unpickled
    torch.save({**tiny_state, "code": SimpleNamespace(x=1)}, pickled)
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        load({"probe": str(pickled)}, num_classes=0)
    # with the published head or without it (num_classes=0, the probe's pooled features), a file
    # of another network is refused: timm alone turned lenient without the head and kept a
    # randomly initialised backbone
    for overrides in ({}, {"num_classes": 0}):
        with pytest.raises(
            ConfigError,
            match=rf"^metric\.weights\.probe={wrong} does not hold {TINY}'s weights: "
            r"the file lacks conv1\.0\.weight, conv1\.1\.weight, .* and \d+ more$",
        ):
            load({"probe": str(wrong)}, **overrides)
    extra = tmp_path / "extra.pt"  # every weight, and one the model does not have
    torch.save({**tiny_state, "neck.weight": torch.zeros(1)}, extra)
    with pytest.raises(ConfigError, match=r"the file has keys the model has not: neck\.weight$"):
        load({"probe": str(extra)}, num_classes=0)


def test_a_file_with_its_classifier_loads_without_the_head(tmp_path: Path):
    """A checkpoint of the whole classifier (head ``fc`` included) feeds the probe's headless backbone."""
    import timm

    torch.manual_seed(1)
    whole = timm.create_model(TINY, pretrained=False).state_dict()
    assert {"fc.weight", "fc.bias"} <= set(whole)
    file = tmp_path / "classifier.pth"
    torch.save(whole, file)
    model = load({"probe": str(file)}, num_classes=0)
    backbone = model.state_dict()
    assert set(backbone) == set(whole) - {"fc.weight", "fc.bias"}
    for key, value in backbone.items():
        assert torch.equal(value, whole[key]), key


@pytest.mark.parametrize(("offline", "state"), [(True, "the hub is offline"), (False, "the download failed")])
@pytest.mark.parametrize(
    ("error", "why"), [(OSError("first line\nsecond line"), "first line"), (OSError(), "OSError")]
)
def test_load_timm_cache_miss_says_why_and_how_to_fetch(monkeypatch, offline, state, error, why):
    import timm

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(weights, "hub_offline", lambda: offline)
    monkeypatch.setattr(timm, "create_model", failing)
    with pytest.raises(weights.MissingWeightsError) as err:
        load({})
    assert str(err.value) == (
        f"the test needs {TINY}'s pretrained weights from the hub repo timm/{TINY}: not in the cache and "
        f"{state} ({why}). Fetch them with `hf download timm/{TINY}` (same HF_HOME) where there is "
        f"network, or {SUPPLY}"
    )
    assert err.value.__cause__ is error


@pytest.mark.parametrize("n_missing", [5, 6, 7])
def test_the_missing_weights_are_named_five_then_counted(tiny_state, tmp_path: Path, n_missing: int):
    # BatchNorm fills a missing num_batches_tracked itself (torch's rule for old checkpoints)
    names = [name for name in tiny_state if not name.endswith("num_batches_tracked")]
    file = tmp_path / "partial.pt"
    torch.save({k: v for k, v in tiny_state.items() if k not in names[:n_missing]}, file)
    more = f" and {n_missing - 5} more" if n_missing > 5 else ""
    with pytest.raises(ConfigError) as err:
        load({"probe": str(file)}, num_classes=0)
    assert str(err.value).endswith(f"the file lacks {', '.join(names[:5])}{more}")


def test_a_classifier_of_several_heads_is_left_over_too(tmp_path: Path):
    """timm names some classifiers as a tuple: DeiT distilled has ("head", "head_dist")."""
    import timm

    name = "deit_tiny_distilled_patch16_224"
    whole = timm.create_model(name, pretrained=False).state_dict()
    heads = {f"{head}.{part}" for head in ("head", "head_dist") for part in ("weight", "bias")}
    assert heads <= set(whole)
    file = tmp_path / "deit.pth"
    torch.save(whole, file)
    explicit = {"probe": str(file)}
    model = weights.load_timm(name, "probe", explicit, setting="-", used_by="-", switch="-", num_classes=0)
    assert set(model.state_dict()) == set(whole) - heads
