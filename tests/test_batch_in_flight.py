"""The run loop keeps one batch in flight: batch k's values are read after batch k+1 is queued.

So the GPU is never idle while the host writes rows and fetches the next batch. The claims under
test: the schedule is really "submit k+1, then finish k"; it writes the same files as finishing
every batch at once (a checkpoint after each batch drains the pipeline); and a reconstruction that
is not finite still stops the job before any of its values is written, although it is found one
batch later.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from tests.conftest import evaluate_job, read_per_image, write_rgb
from vaes4rs import checkpoint, files, reconstructions
from vaes4rs import evaluate as loop
from vaes4rs.models.adapter import NonFiniteOutputError


def run_job(compose_conf: Callable, model_dir: Path, root: Path, out_dir: Path, *overrides: str) -> dict:
    protocol = [
        "metric=paper",
        "metric.lpips=false",
        "metric.fid=false",
        "run.batch_size=2",
        "run.n_samples=2",
    ]
    return evaluate_job(compose_conf, model_dir, root, out_dir, *protocol, *overrides)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The loop's submit/finish calls in order, as "s<first image index>" / "f<first image index>"."""
    seen: list[str] = []
    submit, finish = loop._submit_batch, loop._finish_batch

    def submit_and_note(batch, job):
        seen.append(f"s{batch['records'][0].index}")
        return submit(batch, job)

    def finish_and_note(batch, job):
        seen.append(f"f{batch.records[0].index}")
        return finish(batch, job)

    monkeypatch.setattr(loop, "_submit_batch", submit_and_note)
    monkeypatch.setattr(loop, "_finish_batch", finish_and_note)
    return seen


def test_the_next_batch_is_queued_before_a_batch_is_read_and_the_files_are_the_same(
    compose_conf, tiny_models: Path, tmp_path: Path, calls: list[str]
) -> None:
    images = tmp_path / "images"  # 5 images: batches of 2, 2 and 1
    for i in range(5):
        write_rgb(images / f"class{i % 2}" / f"{i}.png", 24, 24, seed=i)
    model = tiny_models / "SD21-VAE"  # a sampled latent: each image's noise must follow it
    pipelined = run_job(compose_conf, model, images, tmp_path / "pipelined")
    assert calls == ["s0", "s2", "f0", "s4", "f2", "f4"]

    calls.clear()  # a checkpoint after every batch finishes each batch before the next one
    drained = run_job(compose_conf, model, images, tmp_path / "drained", "run.checkpoint_every=1")
    assert calls == ["s0", "f0", "s2", "f2", "s4", "f4"]

    assert pipelined["metrics"] == drained["metrics"]
    written = [tmp_path / name / files.PER_IMAGE_FILE for name in ("pipelined", "drained")]
    assert written[0].read_bytes() == written[1].read_bytes()
    assert len(read_per_image(written[0])["image_id"]) == 5
    runs = ("pipelined", "drained")
    samples = [sorted((tmp_path / name / files.SAMPLES_DIR).rglob("*.png")) for name in runs]
    assert [p.relative_to(tmp_path / "pipelined") for p in samples[0]] == [
        p.relative_to(tmp_path / "drained") for p in samples[1]
    ]
    assert len(samples[0]) == 4  # 2 shown images: original and reconstruction
    for first, second in zip(*samples):
        assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))


def test_a_non_finite_batch_found_a_batch_later_writes_none_of_its_rows(
    compose_conf, tiny_models: Path, tmp_path: Path, calls: list[str]
) -> None:
    """Bright images overflow float16 in the first convolution; mid-grey ones do not."""
    module = AutoencoderKL.from_pretrained(tiny_models / "SD21-VAE")
    with torch.no_grad():
        module.encoder.conv_in.weight.mul_(1e5)
    model = tmp_path / "overflows"
    module.save_pretrained(model)
    images = tmp_path / "images"
    for label, value in (("a_grey", 128), ("b_white", 255), ("c_grey", 128)):
        for i in range(2):
            (images / label).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 16), (value,) * 3).save(images / label / f"{i}.png")
    out_dir = tmp_path / "out"
    with pytest.raises(NonFiniteOutputError, match=r"torch.float16.*'b_white/0.png', 'b_white/1.png'"):
        run_job(compose_conf, model, images, out_dir, "model.dtype=float16")
    assert calls == ["s0", "s2", "f0", "s4", "f2"]  # found when batch 2 was read, batch 4 queued
    rows = read_per_image(out_dir / files.PER_IMAGE_FILE)
    assert list(rows["image_id"]) == ["a_grey/0.png", "a_grey/1.png"]
    assert np.isfinite(rows["psnr"]).all()


def test_a_checkpoint_comes_after_its_batches_reconstructions_are_on_disk(
    compose_conf, tiny_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PNGs are encoded by threads while the loop goes on; a checkpoint must not count a batch
    whose files a crash right after it would lose (a resume does not write them again)."""
    encode = reconstructions._save_png

    def slow_encode(pixels, path):
        time.sleep(0.2)
        encode(pixels, path)

    monkeypatch.setattr(reconstructions, "_save_png", slow_encode)
    missing_at_checkpoints: list[list[str]] = []
    save = checkpoint.save

    def save_and_look(path: Path, progress: checkpoint.Progress) -> None:
        root = path.parent / files.RECONSTRUCTIONS_DIR
        image_id = progress.columns.index("image_id")
        stems = [Path(row[image_id]).with_suffix(".png") for row in progress.rows]
        missing_at_checkpoints.append([str(stem) for stem in stems if not (root / stem).is_file()])
        save(path, progress)

    monkeypatch.setattr(checkpoint, "save", save_and_look)
    images = tmp_path / "images"
    for i in range(4):
        write_rgb(images / "class0" / f"{i}.png", 16, 16, seed=i)
    out = tmp_path / "out"
    overrides = ("run.save_reconstructions=true", "run.checkpoint_every=1", "metric.ssim=false")
    run_job(compose_conf, tiny_models / "SD21-VAE", images, out, *overrides)
    assert missing_at_checkpoints == [[], []]  # two batches, two checkpoints, every file there
    assert len(list((out / files.RECONSTRUCTIONS_DIR / "class0").glob("*.png"))) == 4
