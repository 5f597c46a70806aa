"""Photo normalisation before a photo is stored and sent (protocol §16.1).

A phone photo of 4–8 MB becomes a JPEG of a few hundred KB: the EXIF
orientation is applied to the pixels, the longest edge is limited (1600 px by
default), the image is re-encoded (progressive JPEG, quality 80) and its
metadata is dropped — EXIF (with the GPS position of the worker's door
knock), XMP, ICC profile and comments — unless the caller asks to keep some::

    from fieldsync.photos import normalise

    small = normalise("IMG_0042.JPG")                    # bytes of the new JPEG
    with open("out.jpg", "wb") as out:
        normalise(camera_file, max_edge=1280, out=out)   # or written to a file object

Memory stays flat for any JPEG: the decoder is asked for a reduced image
(``Image.draft``: libjpeg decodes at 1/2, 1/4 or 1/8 scale directly), so a
6000x8000 photo is never held at full resolution (about 30 MB of peak RSS
growth for a 20 MB one).  Other formats (PNG) are decoded whole, so they are
refused above :data:`MAX_FULL_DECODE_PIXELS`.

Pillow is an optional dependency of fieldsync (``pip install fieldsync[photos]``);
it is imported only when a photo is normalised.
"""

from __future__ import annotations

import io
import os
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Collection, overload

from .errors import FieldsyncError

if TYPE_CHECKING:
    from PIL import Image as PILImage

__all__ = ["normalise", "NotAPhotoError", "PhotosUnavailable", "METADATA", "DEFAULT_MAX_EDGE", "DEFAULT_QUALITY",
           "MAX_FULL_DECODE_PIXELS"]

DEFAULT_MAX_EDGE = 1600
DEFAULT_QUALITY = 80
# What ``keep`` may name.  ``gps`` is part of EXIF: keeping it needs ``exif`` too.
METADATA = frozenset({"exif", "gps", "icc", "comment"})
_GPS_IFD = 0x8825
_ORIENTATION = 0x0112
# Formats other than JPEG (PNG) cannot be decoded at a reduced size: refuse what would take
# more than ~200 MB to hold (a 50 Mpx PNG), the way a JPEG of any size never does.
MAX_FULL_DECODE_PIXELS = 50_000_000


class PhotosUnavailable(ImportError):
    """Pillow is not installed; photo normalisation needs ``pip install fieldsync[photos]``."""


class NotAPhotoError(FieldsyncError):
    """The input is not an image Pillow can read (or it is far too big to be a photo)."""


def _pil() -> tuple[Any, Any]:
    try:
        from PIL import Image, ImageOps
    except ImportError as exc:
        raise PhotosUnavailable(
            "fieldsync.photos needs Pillow: install it with  pip install fieldsync[photos]") from exc
    return Image, ImageOps


@overload
def normalise(src: str | os.PathLike[str] | BinaryIO, *, max_edge: int = ..., quality: int = ...,
              keep: Collection[str] = ..., out: None = None) -> bytes: ...


@overload
def normalise(src: str | os.PathLike[str] | BinaryIO, *, max_edge: int = ..., quality: int = ...,
              keep: Collection[str] = ..., out: IO[bytes]) -> int: ...


def normalise(src: str | os.PathLike[str] | BinaryIO, *, max_edge: int = DEFAULT_MAX_EDGE,
              quality: int = DEFAULT_QUALITY, keep: Collection[str] = frozenset(),
              out: IO[bytes] | None = None) -> bytes | int:
    """Re-encode the photo ``src`` (a path or a binary file) as an upright, bounded, clean JPEG.

    Returns the JPEG's bytes, or, when ``out`` is given, writes them there and
    returns how many were written.  ``keep`` names metadata to carry over
    (any of :data:`METADATA`; by default nothing): ``exif`` keeps EXIF
    without its GPS block and without the orientation (already applied),
    ``gps`` the GPS block as well, ``icc`` the colour profile, ``comment``
    the JPEG comment.  An image smaller than ``max_edge`` is not enlarged.

    Raises :class:`NotAPhotoError` for anything Pillow cannot decode and
    :class:`PhotosUnavailable` (an ImportError) when Pillow is missing.
    """
    unknown = set(keep) - METADATA
    if unknown:
        raise ValueError(f"cannot keep {sorted(unknown)}: choose from {sorted(METADATA)}")
    if "gps" in keep and "exif" not in keep:
        raise ValueError("keeping gps needs exif too: keep={'exif', 'gps'}")
    if max_edge < 1 or not 1 <= quality <= 95:
        raise ValueError("max_edge must be positive and quality within 1..95")
    Image, ImageOps = _pil()
    try:
        with Image.open(src) as opened:
            saved = _metadata(opened, keep, Image)
            upright = _decode_bounded(opened, max_edge, Image, ImageOps)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise NotAPhotoError(f"not a readable photo ({type(exc).__name__})") from exc
    upright.info = {}  # nothing of the source's info is written unless asked for below
    buffer = io.BytesIO()  # the result is small (a few hundred KB): encode it whole, then hand it over
    upright.save(buffer, "JPEG", quality=quality, optimize=True, progressive=True, **saved)
    data = buffer.getvalue()
    if out is None:
        return data
    out.write(data)
    return len(data)


def _decode_bounded(opened: "PILImage.Image", max_edge: int, Image: Any, ImageOps: Any) -> "PILImage.Image":
    """Decode at most what ``max_edge`` needs, upright, in RGB or L."""
    w, h = opened.size
    scale = min(1.0, max_edge / max(w, h))
    want = (max(1, round(w * scale)), max(1, round(h * scale)))
    if opened.format == "JPEG" and scale < 1.0:
        # libjpeg decodes at the largest 1/2^k scale still >= the wanted size.
        opened.draft(opened.mode if opened.mode in ("RGB", "L") else None, want)
    elif w * h > MAX_FULL_DECODE_PIXELS:
        raise NotAPhotoError(f"a {opened.format} image of {w}x{h} pixels is too large to decode")
    ImageOps.exif_transpose(opened, in_place=True)  # loads (at the drafted size) and turns upright
    image = opened
    if image.mode not in ("RGB", "L"):
        image = _flatten(image, Image)
    # Orientation may have swapped the axes: bound whichever edge is now longest.
    w, h = image.size
    if max(w, h) > max_edge:
        scale = max_edge / max(w, h)
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS,
                             reducing_gap=3.0)
    return image  # type: ignore[no-any-return]


def _flatten(image: "PILImage.Image", Image: Any) -> "PILImage.Image":
    """RGB for JPEG: transparency composited onto white, palettes and CMYK converted."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white  # type: ignore[no-any-return]
    return image.convert("RGB")


def _metadata(opened: "PILImage.Image", keep: Collection[str], Image: Any) -> dict[str, Any]:
    """The save() arguments carrying what ``keep`` asks for (read before decoding)."""
    saved: dict[str, Any] = {}
    if "icc" in keep and opened.info.get("icc_profile"):
        saved["icc_profile"] = opened.info["icc_profile"]
    if "comment" in keep and opened.info.get("comment"):
        saved["comment"] = opened.info["comment"]
    if "exif" in keep and opened.info.get("exif"):
        exif = Image.Exif()  # a copy: the image's own must keep its orientation for exif_transpose
        exif.load(opened.info["exif"])
        exif.pop(_ORIENTATION, None)  # applied to the pixels: saying it again would turn the photo twice
        if "gps" not in keep:
            exif.pop(_GPS_IFD, None)
        if len(exif):
            saved["exif"] = exif.tobytes()
    return saved
