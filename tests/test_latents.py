"""Latent datasets: packing, export (shards, index, card), lazy reads, decoding, atomic writes, bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT, RS_SAMPLES, SHARED, local_job_overrides, needs_shared, write_rgb
from tests.tiny_models import TINY_MODELS
from vaes4rs.config import ModelConfig
from vaes4rs.encode import EncodeConfig, export, validate_encode
from vaes4rs.errors import ConfigError
from vaes4rs.evaluate import to_minus_one_one
from vaes4rs.latents import (
    CARD_FILE,
    INDEX_COLUMNS,
    INDEX_FILE,
    META_FILE,
    LatentDataset,
    LatentDirectoryError,
    LatentWriter,
    Storage,
    decode_batches,
    model_identity,
    pack,
    unpack,
)
from vaes4rs.models.adapter import VAEAdapter
from vaes4rs.models.zoo import load_vae

TAEF2 = SHARED / "weights" / "taef2"


def encode_cfg(compose_conf: Callable, model_dir: Path, root: Path, *overrides: str) -> EncodeConfig:
    """A validated encode config for a local diffusers model on an image folder, on the CPU."""
    return validate_encode(
        compose_conf(
            [*local_job_overrides(model_dir, root), "run.batch_size=2", *overrides],
            config_name="encode",
        )
    )


def adapter_for(cfg: EncodeConfig, dtype: torch.dtype = torch.float32) -> VAEAdapter:
    module = load_vae(cfg.model, torch.device("cpu"), dtype)
    return VAEAdapter(module, name=cfg.model.name, latent=str(cfg.export.latent), seed=cfg.export.seed)


# --- Packing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["none", "zstd"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_float_storage_returns_the_cast_latent_exactly(dtype: str, codec: str) -> None:
    z = torch.randn(4, 1, 6, 5, generator=torch.Generator().manual_seed(0)) * 3
    back = unpack(pack(z, Storage(dtype, codec)), Storage(dtype, codec), z.shape)
    assert back.dtype == torch.float32
    assert torch.equal(back, z.to(getattr(torch, dtype)).float())


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_uint8_storage_is_within_half_a_step_of_each_channel(codec: str) -> None:
    z = (
        torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(1))
        * torch.tensor([0.1, 1.0, 10.0])[:, None, None]
    )
    z[2] = 7.5  # a constant channel: scale 1, decoded exactly
    entries = pack(z, Storage("uint8", codec))
    back = unpack(entries, Storage("uint8", codec), z.shape)
    step = (z.amax(dim=(1, 2)) - z.amin(dim=(1, 2))) / 255
    error = (back - z).abs().amax(dim=(1, 2))
    assert torch.all(error[:2] <= step[:2] / 2 + 1e-6)
    assert error[2] == 0
    assert entries[".range"].shape == (2, 3)


def test_zstd_is_lossless_and_smaller_on_redundant_latents() -> None:
    z = torch.zeros(4, 16, 16)
    z[:, :8] = 1.0
    plain, packed = pack(z, Storage("float16")), pack(z, Storage("float16", "zstd"))
    assert packed[""].numel() < plain[""].numel() * plain[""].element_size() / 10
    assert torch.equal(unpack(packed, Storage("float16", "zstd"), z.shape), z)


def test_float16_overflow_is_an_error_not_an_inf() -> None:
    with pytest.raises(ValueError, match="do not fit float16"):
        pack(torch.full((1, 2, 2), 1e6), Storage("float16"))


@pytest.mark.parametrize("label", ["int4", "uint8+lz4", "float16+zstd+zstd"])
def test_unknown_storage_is_a_clear_error(label: str) -> None:
    with pytest.raises(ValueError, match="unknown latent storage"):
        Storage.parse(label)


# --- Export and read back ----------------------------------------------------------------------


def test_export_writes_shards_index_and_card(
    compose_conf, tiny_models: Path, image_folder: Path, tmp_path: Path
) -> None:
    cfg = encode_cfg(
        compose_conf, tiny_models / "SD21-VAE", image_folder, "export.dtype=uint8", "export.shard_bytes=2000"
    )
    out = tmp_path / "latents"
    meta = export(cfg, out, "python -m vaes4rs.encode (test)")
    shards = sorted(out.glob("shard-*.safetensors"))
    assert len(shards) == len(meta["shards"]) > 1  # 2000 bytes hold at most two of these latents
    on_disk = sum(p.stat().st_size for p in shards)
    pixels = 3 * 64 * 64 + 2 * 150 * 150 + 96 * 96
    assert (meta["n_images"], meta["pixels"], meta["bytes"]["shards"]) == (6, pixels, on_disk)
    assert meta["bpp"] == 8 * on_disk / pixels
    assert meta["bytes_per_image"] == on_disk / 6
    with (out / INDEX_FILE).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == INDEX_COLUMNS
    assert [r["image_id"] for r in rows][:2] == ["forest/forest_0.png", "forest/forest_1.png"]
    harbor_150 = next(r for r in rows if r["image_id"] == "harbor/harbor_0.png")
    # 150 is padded to 152 (the tiny SD21 model's multiple is 4): a 38x38 latent, cropped back to 150
    assert (harbor_150["latent_shape"], harbor_150["height"], harbor_150["width"]) == (
        "4x38x38",
        "150",
        "150",
    )
    assert sum(int(r["bytes"]) for r in rows) == meta["bytes"]["payload"] < on_disk
    card = (out / CARD_FILE).read_text()
    for fact in (
        "AutoencoderKL",
        "latent policy | mode",
        "stored dtype | uint8",
        "scaling factor | 0.18215",
        "python -m vaes4rs.encode (test)",
        "licence | not recorded",
        "bits per pixel (shards) | ",
    ):
        assert fact in card, fact
    recorded = json.loads((out / META_FILE).read_text())
    assert recorded["storage"]["label"] == "uint8" and "quantisation" in recorded["storage"]
    assert recorded["model"]["identity"]["class"] == "AutoencoderKL"


@pytest.mark.parametrize("model", ["SD21-VAE", "Qwen-VAE"])
def test_float32_export_decodes_to_the_direct_reconstruction_exactly(
    compose_conf, tiny_models: Path, image_folder: Path, tmp_path: Path, model: str
) -> None:
    # harbor: 150x150 twice (padded: 150 is no multiple of 4) and 96x96, batched apart
    cfg = encode_cfg(
        compose_conf, tiny_models / model, image_folder, "export.dtype=float32", "dataset.classes=[harbor]"
    )
    export(cfg, tmp_path / "f32", "test")
    latents = LatentDataset(tmp_path / "f32")
    adapter = adapter_for(cfg)
    batches = list(decode_batches(latents, adapter, batch_size=cfg.run.batch_size))
    decoded = [r.index for b in batches for r in b.records]
    assert sorted(decoded) == [e.index for e in latents.entries] == list(range(3)) and len(batches) == 2
    for batch in batches:
        assert batch.images.dtype == torch.uint8 and batch.recon.dtype == torch.float32
        direct = adapter.reconstruct(to_minus_one_one(batch.images))
        assert torch.equal(batch.recon, direct)


def test_a_sampled_export_holds_the_noise_run_draws_for_each_image(
    compose_conf, tiny_models: Path, image_folder: Path, tmp_path: Path
) -> None:
    overrides = ("export.dtype=float32", "export.latent=sample", "dataset.classes=[forest]")
    cfg = encode_cfg(compose_conf, tiny_models / "SD21-VAE", image_folder, *overrides)
    export(cfg, tmp_path / "sampled", "test")
    adapter = adapter_for(cfg)
    assert not adapter.deterministic
    for batch in decode_batches(LatentDataset(tmp_path / "sampled"), adapter, batch_size=2):
        ids = [r.image_id for r in batch.records]
        x = to_minus_one_one(batch.images)
        assert torch.equal(batch.recon, adapter.reconstruct(x, ids))
        assert not torch.equal(
            batch.recon, adapter.reconstruct(x, [f"other/{i}" for i in ids])
        )  # noise per id
    assert "latent policy | sample (seed 42;" in (tmp_path / "sampled" / CARD_FILE).read_text()


def test_reduced_storage_differences_are_small_and_measured(
    compose_conf, tiny_models: Path, image_folder: Path, tmp_path: Path
) -> None:
    largest = {}
    for dtype in ("float16", "uint8"):
        cfg = encode_cfg(
            compose_conf,
            tiny_models / "FLUX2-VAE",
            image_folder,
            f"export.dtype={dtype}",
            "dataset.classes=[forest]",
        )
        export(cfg, tmp_path / dtype, "test")
        adapter = adapter_for(cfg)
        largest[dtype] = max(
            float((b.recon - adapter.reconstruct(to_minus_one_one(b.images))).abs().max())
            for b in decode_batches(LatentDataset(tmp_path / dtype), adapter, batch_size=2)
        )
    assert 0 < largest["float16"] < largest["uint8"] < 0.1


def test_dataset_reads_lazily_and_pickles_without_open_shards(
    compose_conf, tiny_models: Path, image_folder: Path, tmp_path: Path
) -> None:
    export(
        encode_cfg(compose_conf, tiny_models / "SD21-VAE", image_folder, "export.shard_bytes=600"),
        tmp_path,
        "t",
    )
    latents = LatentDataset(tmp_path)
    assert latents._open == {}
    item = latents[4]
    assert item["entry"].image_id == "harbor/harbor_1.png" and item["latent"].shape == (4, 24, 24)
    assert list(latents._open) == [item["entry"].shard]
    import pickle

    assert pickle.loads(pickle.dumps(latents))._open == {}


# --- Atomic writes -----------------------------------------------------------------------------

_CRASHING_EXPORT = """
import os, sys, torch
from pathlib import Path
from vaes4rs import latents
from vaes4rs.data import ImageRecord

real_replace = os.replace
def replace_or_die(src, dst):
    if str(dst).endswith("shard-00001.safetensors"):
        os._exit(9)  # the process dies between writing shard 1 and renaming it into place
    real_replace(src, dst)
latents.os.replace = replace_or_die
writer = latents.LatentWriter(Path(sys.argv[1]), latents.Storage("float16"), {}, max_shard_bytes=1100)
for i in range(6):
    record = ImageRecord(i, f"c/{i}.png", "c", Path(f"c/{i}.png"))
    writer.add(record, torch.randn(4, 8, 8), 64, 64, "0" * 64)
writer.close()
"""


def test_a_crash_leaves_complete_files_or_none(tmp_path: Path) -> None:
    out = tmp_path / "crashed"
    done = subprocess.run(
        [sys.executable, "-c", _CRASHING_EXPORT, str(out)], cwd=REPO_ROOT, capture_output=True
    )
    assert done.returncode == 9, done.stderr.decode()
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.safetensors"]
    assert not (out / META_FILE).exists() and not (out / CARD_FILE).exists()
    with (out / INDEX_FILE).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["shard"] for r in rows} == {"shard-00000.safetensors"} and len(rows) == 2
    from safetensors.torch import load_file

    assert sorted(load_file(out / "shard-00000.safetensors")) == [r["key"] for r in rows]
    assert list(out.glob(".*.tmp"))  # the half-renamed shard kept its temporary name
    with pytest.raises(LatentDirectoryError, match="did not finish"):
        LatentDataset(out)
    with pytest.raises(LatentDirectoryError, match="already holds a latent dataset"):
        LatentWriter(out, Storage(), {})
    LatentWriter(out, Storage(), {}, overwrite=True)
    assert not any(out.iterdir())


def test_a_failed_shard_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vaes4rs import latents

    def half_then_fail(tensors, path, metadata=None) -> None:
        Path(path).write_bytes(b"\0" * 10)
        raise OSError("disk full")

    monkeypatch.setattr(latents, "save_file", half_then_fail)
    writer = LatentWriter(tmp_path, Storage(), {})
    writer.add(
        latents.ImageRecord(0, "c/0.png", "c", Path("c/0.png")), torch.zeros(4, 2, 2), 16, 16, "0" * 64
    )
    with pytest.raises(OSError, match="disk full"):
        writer.close()
    assert list(tmp_path.iterdir()) == []


# --- Bad input ---------------------------------------------------------------------------------


@pytest.fixture()
def sd21_export(
    compose_conf, tiny_models: Path, image_folder: Path, tmp_path: Path
) -> tuple[EncodeConfig, Path]:
    cfg = encode_cfg(compose_conf, tiny_models / "SD21-VAE", image_folder, "export.shard_bytes=600")
    export(cfg, tmp_path / "sd21", "test")
    return cfg, tmp_path / "sd21"


def test_missing_or_truncated_shards_are_named(sd21_export) -> None:
    _, out = sd21_export
    (out / "shard-00001.safetensors").unlink()
    with (out / "shard-00002.safetensors").open("r+b") as handle:
        handle.truncate(100)
    with pytest.raises(
        LatentDirectoryError, match="shard-00001.safetensors is missing.*shard-00002.safetensors has 100"
    ):
        LatentDataset(out)


def test_latents_of_another_model_are_refused(sd21_export, tiny_models: Path, tmp_path: Path) -> None:
    cfg, out = sd21_export
    latents = LatentDataset(out)
    flux2 = load_vae(
        ModelConfig(name="f2", path=str(tiny_models / "FLUX2-VAE")), torch.device("cpu"), torch.float32
    )
    with pytest.raises(LatentDirectoryError, match="another one.*class: AutoencoderKL vs AutoencoderKLFlux2"):
        next(decode_batches(latents, VAEAdapter(flux2, name="f2", latent="mode"), 2))
    import diffusers

    class_name, kwargs = TINY_MODELS["SD21-VAE"]
    torch.manual_seed(1)
    getattr(diffusers, class_name)(**kwargs).save_pretrained(tmp_path / "retrained")
    retrained = load_vae(
        ModelConfig(name="r", path=str(tmp_path / "retrained")), torch.device("cpu"), torch.float32
    )
    with pytest.raises(LatentDirectoryError, match="weights: .* parameter tensors differ"):
        latents.check_model(retrained)
    latents.check_model(load_vae(cfg.model, torch.device("cpu"), torch.bfloat16))  # same weights, other dtype
    recorded = latents.model_config()
    assert (recorded.path, str(recorded.dtype)) == (str(tiny_models / "SD21-VAE"), "float32")
    latents.check_model(load_vae(recorded, torch.device("cpu"), torch.float32))


def test_a_changed_or_moved_source_image_is_named(sd21_export, image_folder: Path, tmp_path: Path) -> None:
    cfg, out = sd21_export
    adapter = adapter_for(cfg)
    moved = tmp_path / "moved"
    image_folder.rename(moved)
    with pytest.raises(LatentDirectoryError, match="forest_0.png of .* is missing; pass .* source_root"):
        list(decode_batches(LatentDataset(out), adapter, 2))
    assert len(list(decode_batches(LatentDataset(out), adapter, 2, source_root=moved))) == 4
    write_rgb(moved / "harbor" / "harbor_1.png", 96, 96, seed=99)
    with pytest.raises(LatentDirectoryError, match="harbor_1.png changed since its latent was written"):
        list(decode_batches(LatentDataset(out), adapter, 2, source_root=moved))


def test_not_a_latent_directory(tmp_path: Path) -> None:
    with pytest.raises(LatentDirectoryError, match="does not exist"):
        LatentDataset(tmp_path / "nothing")
    with pytest.raises(
        LatentDirectoryError, match="not a latent dataset written by python -m vaes4rs.encode"
    ):
        LatentDataset(tmp_path)


def test_an_existing_export_is_not_overwritten_without_consent(sd21_export) -> None:
    cfg, out = sd21_export
    with pytest.raises(LatentDirectoryError, match="export.overwrite=true"):
        export(cfg, out, "again")
    cfg.export.overwrite = True
    assert export(cfg, out, "again")["command"] == "again"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("export.dtype=int4", "int4"),
        ("export.codec=lz4", "lz4"),
        ("export.level=30", "zstd level must be 1-22"),
        ("export.shard_bytes=0", "export.shard_bytes must be positive"),
        ("+export.dtpye=uint8", "unknown key export.dtpye"),
    ],
)
def test_bad_export_settings_fail_at_start_up(
    compose_conf, tiny_models: Path, tmp_path: Path, override, message
) -> None:
    with pytest.raises(Exception, match=message):
        encode_cfg(compose_conf, tiny_models / "SD21-VAE", tmp_path, override)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # encode reads images as they are: a degradation would otherwise be silently ignored
        (["dataset.degrade.noise_sigma=0.1"], r"dataset.degrade \(noise\) is applied by vaes4rs.run only"),
        (["dataset.source=scene", "dataset.path=x.tif"], "dataset.source=scene is read by vaes4rs.run only"),
        (["dataset.source=latents"], "dataset.source=latents is read by vaes4rs.run only"),
    ],
)
def test_what_only_run_applies_is_refused_by_encode(
    compose_conf, tiny_models: Path, tmp_path: Path, overrides, message
) -> None:
    with pytest.raises(ConfigError, match=message):
        encode_cfg(compose_conf, tiny_models / "SD21-VAE", tmp_path, *overrides)


# --- The command, and the real TAEF2 -----------------------------------------------------------


@pytest.mark.slow
def test_encode_cli_writes_a_latent_directory(tiny_models: Path, image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = [
        "model=local",
        f"model.path={tiny_models / 'FLUX2-VAE'}",
        "dataset=folder",
        f"dataset.root={image_folder}",
        "dataset.num_workers=0",
        "run.device=cpu",
        "export.dtype=bfloat16",
        "export.codec=zstd",
        f"hydra.run.dir={out}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "vaes4rs.encode", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "bytes on disk per image" in done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        CARD_FILE,
        INDEX_FILE,
        META_FILE,
        "shard-00000.safetensors",
    ]
    assert "export.codec=zstd" in json.loads((out / META_FILE).read_text())["command"]
    bad = subprocess.run(
        [sys.executable, "-m", "vaes4rs.encode", *args[:-1], "export.dtype=int4"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0 and "int4" in bad.stderr + bad.stdout


def test_real_taef2_latents_round_trip(compose_conf, tmp_path: Path) -> None:
    needs_shared(TAEF2)
    needs_shared(RS_SAMPLES / "resisc45")
    root = tmp_path / "resisc45"
    (root / "airplane").mkdir(parents=True)
    for source in sorted((RS_SAMPLES / "resisc45" / "airplane").iterdir())[:1]:
        (root / "airplane" / source.name).symlink_to(source)
    common = [
        "model=taef2",
        f"model.path={TAEF2}",
        "dataset=folder",
        f"dataset.root={root}",
        "dataset.resize=[128,128]",  # real pixels, a quarter of the compute; decoding resizes the same way
        "dataset.num_workers=0",
        "run.device=cpu",
        "run.progress=false",
    ]
    f32 = validate_encode(compose_conf([*common, "export.dtype=float32"], config_name="encode"))
    u8 = validate_encode(
        compose_conf([*common, "export.dtype=uint8", "export.codec=zstd"], config_name="encode")
    )
    meta32, meta8 = export(f32, tmp_path / "f32", "t"), export(u8, tmp_path / "u8", "t")
    # 32 channels at 1/8 resolution: 16 bpp as float32; 4 bpp as uint8 plus its per-channel range
    # (0.125 bpp at 128x128), a little less after zstd; shard headers on top
    assert 16 < meta32["bpp"] < 16.1 and 3.5 < meta8["bpp"] < 4.125
    adapter = adapter_for(f32)
    assert model_identity(adapter.module)["class"] == "TinyAutoencoder"
    (batch,) = decode_batches(LatentDataset(tmp_path / "f32"), adapter, batch_size=64)
    direct = adapter.reconstruct(to_minus_one_one(batch.images))
    assert torch.equal(batch.recon, direct)
    (stored,) = decode_batches(LatentDataset(tmp_path / "u8"), adapter, batch_size=64)
    error = ((stored.recon - direct) / 2).pow(2).mean()
    assert 40 < float(10 * torch.log10(1 / error)) < 80  # uint8 latents: a small, measured difference
