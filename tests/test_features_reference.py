"""FrozenFeatures and KeptFeatures against their definitions, on inputs the tests make themselves.

FrozenFeatures is given a small spy network that carries its own timm pretrained config (shorter
side to input size / crop_pct, bicubic and antialiased, centre crop, a mean and std that differ per
channel) and returns the first numbers of what it was fed, so the preprocessing written out here
by hand (torch's interpolate, slicing, arithmetic) is compared with what the network really saw.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vaes4rs.metrics.features import FrozenFeatures, KeptFeatures

CPU = torch.device("cpu")
MEAN = (0.4, 0.3, 0.2)
STD = (0.2, 0.25, 0.3)


class Spy(nn.Module):
    """Keeps its input; returns its first 6 values per image, plus 1 (so no row has unit length)."""

    pretrained_cfg = dict(
        input_size=(3, 24, 24),
        interpolation="bicubic",
        mean=MEAN,
        std=STD,
        crop_pct=0.75,  # shorter side to 24 / 0.75 = 32
        crop_mode="center",
    )

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # shows which device the network was put on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        return x.flatten(1)[:, :6].double() + 1


def by_hand(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] to [0, 1], clipped; 40x48 resized to 32x38 (int(32 * 48 / 40) = 38), bicubic with
    antialiasing; rows 4:28 and columns 7:31 (centre crop 24); (x - mean) / std per channel."""
    pixels = ((images + 1) / 2).clamp(0, 1)
    resized = nn.functional.interpolate(pixels, size=(32, 38), mode="bicubic", antialias=True)
    cropped = resized[..., 4:28, 7:31]
    return (cropped - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def images_beyond_range(seed: int) -> torch.Tensor:
    """Values in [-1.6, 1.6]: a decoder's overshoot on both sides, which must be clipped to [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 40, 48, generator=generator) * 3.2 - 1.6


def test_frozen_features_preprocess_as_the_timm_config_says_and_clip_the_range():
    spy = Spy()
    embed = FrozenFeatures(spy, CPU)  # unit defaults to off
    images = images_beyond_range(0)
    assert (images > 1).any() and (images < -1).any()
    got = embed(images)
    # float32 resampling of the same pixels: differences of a few float32 ulps
    torch.testing.assert_close(spy.seen, by_hand(images), rtol=1e-5, atol=1e-5)
    expected = by_hand(images).flatten(1)[:, :6] + 1
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got.norm(dim=1) - 1).abs().min() > 0.1  # not normalised by default


def test_frozen_features_unit_rows_have_length_one_along_the_feature_axis():
    spy = Spy()
    images = images_beyond_range(1)
    got = FrozenFeatures(spy, CPU, unit=True)(images)
    raw = by_hand(images).flatten(1)[:, :6] + 1
    torch.testing.assert_close(got, raw / raw.norm(dim=1, keepdim=True), rtol=1e-5, atol=1e-6)


def test_frozen_features_are_deterministic_eval_preprocessing():
    """The eval transform only: no random crop or flip between two calls on the same images."""
    spy = Spy()
    embed = FrozenFeatures(spy, CPU)
    images = images_beyond_range(2)
    torch.manual_seed(0)
    first = embed(images)
    torch.manual_seed(1)
    assert torch.equal(embed(images), first)
    assert spy.seen.shape == (2, 3, 24, 24)


def test_frozen_features_put_the_network_on_the_device_asked():
    """The meta device stands in for an accelerator."""
    assert FrozenFeatures(Spy(), torch.device("meta")).model.anchor.device.type == "meta"


def features(n: int, value: float) -> torch.Tensor:
    return torch.full((n, 2), value)


def test_kept_features_store_batches_in_order_with_their_labels():
    kept = KeptFeatures()
    kept.add(("a", "b"), features(2, 1.0), features(2, -1.0))
    kept.add(["c"], features(1, 2.0), features(1, -2.0))
    assert kept.count == 3
    assert kept.labels() == ["a", "b", "c"]
    assert torch.equal(kept.real(), torch.tensor([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0]]))
    assert torch.equal(kept.fake(), -kept.real())
    assert isinstance(kept.entries[0][0], list)  # stored as a list, whatever sequence was given
    with pytest.raises(ValueError, match=r"^3 labels for a batch of 2 images$"):
        kept.add(["a", "b", "c"], features(2, 0.0), features(2, 0.0))
    assert kept.count == 3  # the refused batch was not kept


def test_kept_features_without_labels_say_none():
    kept = KeptFeatures()
    kept.add(None, features(2, 1.0), features(2, 1.0))
    assert kept.labels() is None and kept.entries[0][0] is None
    kept.add(["x"], features(1, 1.0), features(1, 1.0))
    assert kept.labels() is None  # one batch without labels: no labels for the set
    assert KeptFeatures().labels() == []


def test_kept_features_merge_puts_ranks_batches_back_in_set_order():
    """Rank 0 scored batches 0, 2, 4 and rank 1 batches 1, 3: merged, they are 0, 1, 2, 3, 4."""
    ranks = [KeptFeatures(), KeptFeatures()]
    for number in range(5):
        ranks[number % 2].add([f"img{number}"], features(1, number), features(1, -number))
    merged = KeptFeatures.merge(ranks, [[0, 2, 4], [1, 3]])
    assert merged.labels() == [f"img{i}" for i in range(5)]
    assert torch.equal(merged.real()[:, 0], torch.arange(5.0))
    assert torch.equal(merged.fake()[:, 0], -torch.arange(5.0))
    # numbers out of order within a rank are honoured too
    swapped = KeptFeatures.merge([ranks[1], ranks[0]], [[3, 1], [4, 2, 0]])
    assert swapped.labels() == ["img4", "img3", "img2", "img1", "img0"]
