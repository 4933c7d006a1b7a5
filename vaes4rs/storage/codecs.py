"""Image codecs of the rate-distortion study: one parameter each, its valid range, its default sweep.

Each codec writes the file format people store (JPEG/JFIF, WebP, AVIF, JPEG 2000 in a JP2
box, a bare JPEG XL codestream) with its library's default settings except the swept
parameter, so the bytes counted are the bytes a file of that kind holds. The parameter is
the codec's own: a quality from 0 (or 1) to 100, except JPEG 2000, whose OpenJPEG encoder
takes a compression ratio (higher is smaller) and uses the lossy 9/7 wavelet here.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, features


class CodecError(ValueError):
    """An unknown codec, a parameter out of its range, or a codec this install cannot run."""


@dataclass(frozen=True)
class Codec:
    name: str
    label: str
    pil_format: str
    param_name: str  # "quality" or "compression_ratio"
    low: float
    high: float
    integer: bool
    defaults: tuple[float, ...]
    fixed: dict[str, Any] = field(default_factory=dict)  # save options besides the parameter
    install_hint: str = ""

    def options(self, param: float) -> dict[str, Any]:
        if self.param_name == "compression_ratio":
            return {"quality_mode": "rates", "quality_layers": [float(param)], **self.fixed}
        return {"quality": int(param), **self.fixed}


CODECS: dict[str, Codec] = {
    codec.name: codec
    for codec in (
        Codec("jpeg", "JPEG", "JPEG", "quality", 1, 100, True, (5, 10, 25, 50, 75, 90, 95)),
        Codec("webp", "WebP", "WEBP", "quality", 0, 100, True, (5, 25, 50, 75, 90, 100)),
        Codec(
            "avif",
            "AVIF",
            "AVIF",
            "quality",
            0,
            100,
            True,
            (10, 30, 50, 70, 85, 95),
            install_hint="Pillow >= 11.3 wheels include AVIF: pip install -U pillow",
        ),
        Codec(
            "jpeg2000",
            "JPEG 2000",
            "JPEG2000",
            "compression_ratio",
            2,
            2000,
            False,
            (200, 100, 50, 24, 12, 6, 3),
            fixed={"irreversible": True},
            install_hint="a Pillow built with OpenJPEG (the PyPI wheels are)",
        ),
        Codec(
            "jxl",
            "JPEG XL",
            "JXL",
            "quality",
            0,
            100,
            True,
            (10, 30, 50, 70, 85, 95),
            install_hint="pip install pillow-jxl-plugin",
        ),
    )
}
_PIL_FEATURES = {"jpeg": "jpg", "webp": "webp", "avif": "avif", "jpeg2000": "jpg_2000"}


def get_codec(name: str) -> Codec:
    if name not in CODECS:
        raise CodecError(f"unknown codec {name!r}; valid: {', '.join(sorted(CODECS))}")
    return CODECS[name]


def check_available(codec: Codec) -> None:
    """Raise CodecError (saying what to install) when this install cannot write the codec."""
    if codec.name == "jxl":
        try:
            import pillow_jxl  # noqa: F401  (registers the JXL format with Pillow)
        except ImportError as exc:
            raise CodecError(f"codec jxl needs the JPEG XL plugin: {codec.install_hint}") from exc
    elif not features.check(_PIL_FEATURES[codec.name]):
        raise CodecError(f"codec {codec.name}: this Pillow cannot write it; {codec.install_hint}")


def check_params(codec: Codec, params: list[float]) -> list[float]:
    """The parameters, checked against the codec's range; a clear error naming the bad one."""
    if not params:
        raise CodecError(f"codec {codec.name}: no {codec.param_name} values given")
    for value in params:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise CodecError(f"codec {codec.name}: {codec.param_name} {value!r} is not a number")
        kind = "an integer" if codec.integer else "a number"
        if not codec.low <= value <= codec.high or (codec.integer and value != int(value)):
            raise CodecError(
                f"codec {codec.name}: {codec.param_name} {value} is out of range; "
                f"it is {kind} from {codec.low:g} to {codec.high:g}"
            )
    return [int(v) if codec.integer else float(v) for v in params]


def round_trip(codec: Codec, image: np.ndarray, param: float) -> tuple[int, np.ndarray]:
    """Encode an HxWx3 uint8 image as a file of the codec; its size in bytes and the decoded pixels."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, codec.pil_format, **codec.options(param))
    data = buffer.getvalue()
    with Image.open(io.BytesIO(data)) as decoded:
        pixels = np.asarray(decoded.convert("RGB"))
    if pixels.shape != image.shape:
        raise CodecError(f"codec {codec.name} returned {pixels.shape} for an image of {image.shape}")
    return len(data), pixels
