"""Photo normalisation: upright, bounded, re-encoded, no metadata left, and flat memory for a 20 MB photo."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import pytest
from PIL import Image, ImageCms

from fieldsync import photos
from fieldsync.photos import METADATA, NotAPhotoError, PhotosUnavailable, normalise

REPO = Path(__file__).resolve().parents[1]
MAKE = "FieldCam-X9"
COMMENT = b"door 502, Zhang family"
GPS = {1: "N", 2: (30.0, 33.0, 12.5), 3: "E", 4: (114.0, 18.0, 5.0)}
RED, BLUE = (255, 0, 0), (0, 0, 255)
BIG_MB_RANGE = (15, 30)
RSS_LIMIT_MB = 150


def two_halves(size: tuple[int, int]) -> Image.Image:
    """Left half red, right half blue (as stored)."""
    img = Image.new("RGB", size, BLUE)
    img.paste(RED, (0, 0, size[0] // 2, size[1]))
    return img


def camera_jpeg(size: tuple[int, int] = (400, 200), orientation: int | None = 6, quality: int = 95) -> bytes:
    """A JPEG as a phone writes it: EXIF (make, orientation, GPS), a comment and an ICC profile."""
    exif = Image.Exif()
    exif[0x010F] = MAKE
    if orientation is not None:
        exif[0x0112] = orientation
    exif[0x8825] = GPS
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out = io.BytesIO()
    two_halves(size).save(out, "JPEG", exif=exif.tobytes(), comment=COMMENT, icc_profile=icc, quality=quality)
    return out.getvalue()


def opened(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def near(pixel: tuple[int, ...], colour: tuple[int, int, int]) -> bool:
    return all(abs(a - b) < 40 for a, b in zip(pixel, colour))


# -- orientation and size -----------------------------------------------------------

def test_orientation_is_applied_to_the_pixels() -> None:
    src = camera_jpeg((400, 200), orientation=6)  # stored sideways: the camera was held upright
    img = opened(normalise(io.BytesIO(src)))
    assert img.size == (200, 400)
    # Orientation 6: the stored left edge is the top of the picture.
    assert near(img.getpixel((100, 50)), RED) and near(img.getpixel((100, 350)), BLUE)
    assert 0x0112 not in img.getexif()  # never turned twice by a viewer


@pytest.mark.parametrize("orientation, size, top_left", [
    (1, (400, 200), RED), (3, (400, 200), BLUE), (6, (200, 400), RED), (8, (200, 400), BLUE)])
def test_every_common_orientation(orientation: int, size: tuple[int, int], top_left: tuple[int, int, int]) -> None:
    img = opened(normalise(io.BytesIO(camera_jpeg((400, 200), orientation=orientation))))
    assert img.size == size
    assert near(img.getpixel((20, 20)), top_left)


def test_longest_edge_is_limited_and_small_photos_are_not_enlarged() -> None:
    assert opened(normalise(io.BytesIO(camera_jpeg((3000, 2000), orientation=None)))).size == (1600, 1067)
    assert opened(normalise(io.BytesIO(camera_jpeg((3000, 2000), orientation=None)), max_edge=1000)).size == (1000, 667)
    assert opened(normalise(io.BytesIO(camera_jpeg((800, 600), orientation=None)))).size == (800, 600)
    # a sideways photo: the limit holds on the upright longest edge, with draft decoding in play
    img = opened(normalise(io.BytesIO(camera_jpeg((4000, 3000), orientation=6))))
    assert img.size == (1200, 1600)
    assert near(img.getpixel((600, 100)), RED) and near(img.getpixel((600, 1500)), BLUE)


# -- metadata ---------------------------------------------------------------------------

def test_metadata_is_stripped_by_default() -> None:
    src = camera_jpeg()
    assert MAKE.encode() in src and COMMENT in src and b"Exif\x00\x00" in src
    out = normalise(io.BytesIO(src))
    img = opened(out)
    assert img.format == "JPEG"
    assert len(img.getexif()) == 0 and "exif" not in img.info
    assert "icc_profile" not in img.info and "comment" not in img.info
    assert b"Exif" not in out and MAKE.encode() not in out and COMMENT not in out
    assert b"ICC_PROFILE" not in out and b"http://ns.adobe.com/xap" not in out


def test_metadata_kept_on_request() -> None:
    src = camera_jpeg()
    exif_only = opened(normalise(io.BytesIO(src), keep={"exif"}))
    assert exif_only.getexif().get(0x010F) == MAKE
    assert 0x8825 not in exif_only.getexif()  # GPS goes unless asked for by name
    assert 0x0112 not in exif_only.getexif()
    with_gps = opened(normalise(io.BytesIO(src), keep={"exif", "gps"}))
    assert with_gps.getexif().get_ifd(0x8825)[1] == "N"
    icc_comment = opened(normalise(io.BytesIO(src), keep={"icc", "comment"}))
    assert icc_comment.info.get("comment") == COMMENT and icc_comment.info.get("icc_profile")
    assert len(icc_comment.getexif()) == 0
    assert METADATA == {"exif", "gps", "icc", "comment"}
    with pytest.raises(ValueError):
        normalise(io.BytesIO(src), keep={"gps"})  # GPS lives inside EXIF
    with pytest.raises(ValueError):
        normalise(io.BytesIO(src), keep={"xmp"})


# -- encoding ---------------------------------------------------------------------------

def _detailed(size: tuple[int, int] = (1200, 900)) -> bytes:
    noise = Image.merge("RGB", [Image.effect_noise(size, 40) for _ in range(3)])
    out = io.BytesIO()
    noise.save(out, "JPEG", quality=95)
    return out.getvalue()


def test_quality_sets_the_quantisation_and_the_size() -> None:
    src = _detailed()
    q80 = normalise(io.BytesIO(src))
    q40 = normalise(io.BytesIO(src), quality=40)
    assert len(q40) < len(q80) < len(src)
    reference = io.BytesIO()
    opened(src).save(reference, "JPEG", quality=80)
    img = opened(q80)
    assert img.quantization == opened(reference.getvalue()).quantization  # the tables of quality 80
    assert img.info.get("progressive") == 1
    with pytest.raises(ValueError):
        normalise(io.BytesIO(src), quality=0)


def test_paths_files_and_output_files(tmp_path: Path) -> None:
    path = tmp_path / "IMG_0042.JPG"
    path.write_bytes(camera_jpeg())
    as_bytes = normalise(path)
    with open(path, "rb") as fh:
        assert normalise(fh) == as_bytes
    out = io.BytesIO(b"prefix")
    out.seek(0, io.SEEK_END)
    assert normalise(str(path), out=out) == len(as_bytes)
    assert out.getvalue() == b"prefix" + as_bytes


def test_png_with_transparency_becomes_a_jpeg_on_white() -> None:
    img = Image.new("RGBA", (300, 100), (0, 0, 0, 0))
    img.paste((255, 0, 0, 255), (0, 0, 150, 100))
    src = io.BytesIO()
    img.save(src, "PNG")
    out = opened(normalise(io.BytesIO(src.getvalue())))
    assert out.format == "JPEG" and out.mode == "RGB" and out.size == (300, 100)
    assert near(out.getpixel((50, 50)), RED) and near(out.getpixel((250, 50)), (255, 255, 255))


def test_a_huge_png_is_refused_rather_than_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    src = io.BytesIO()
    Image.new("RGB", (400, 300), RED).save(src, "PNG")
    monkeypatch.setattr(photos, "MAX_FULL_DECODE_PIXELS", 100_000)
    with pytest.raises(NotAPhotoError, match="too large"):
        normalise(io.BytesIO(src.getvalue()))
    big_jpeg = camera_jpeg((400, 300), orientation=None)  # a JPEG is decoded reduced: any size is fine
    assert opened(normalise(io.BytesIO(big_jpeg), max_edge=200)).size == (200, 150)


def test_not_a_photo() -> None:
    with pytest.raises(NotAPhotoError):
        normalise(io.BytesIO(b"%PDF-1.7 not a photo at all"))
    with pytest.raises(NotAPhotoError):
        normalise(io.BytesIO(camera_jpeg()[:300]))  # cut off


def test_pillow_is_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    # The module imports without Pillow (the library does not need it) ...
    code = "import sys; sys.modules['PIL'] = None; import fieldsync.photos, fieldsync.sync; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr
    # ... and says how to get it when a photo is normalised.
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(PhotosUnavailable, match=r"pip install fieldsync\[photos\]") as err:
        normalise(io.BytesIO(b"\xff\xd8\xff"))
    assert isinstance(err.value, ImportError)


# -- memory: a 20 MB, 6000x8000 photo is never decoded at full size ----------------------

GENERATE = textwrap.dedent("""
    import sys
    from PIL import Image
    # Noise of moderate amplitude, tiled: JPEG codes every 8x8 block on its own, so the file
    # is as big as noise over the whole frame (~20 MB at quality 92) without 144 MB of random bytes.
    tile = Image.merge("RGB", [Image.effect_noise((1000, 1000), 12) for _ in range(3)])
    img = Image.new("RGB", (6000, 8000))
    for x in range(0, 6000, 1000):
        for y in range(0, 8000, 1000):
            img.paste(tile, (x, y))
    img.save(sys.argv[1], "JPEG", quality=92)
""")

MEASURE = textwrap.dedent("""
    import json, resource, sys, time
    from PIL import Image, JpegImagePlugin
    from fieldsync.photos import normalise
    if sys.argv[2] == "no-draft":  # the positive control: what a full decode costs
        JpegImagePlugin.JpegImageFile.draft = lambda self, mode, size: None
    Image.open(sys.argv[1]).close()  # plugins loaded before the baseline
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert before < 100 * 1024, f"the baseline is already {before} KB: not a fresh process"
    t = time.perf_counter()
    out = normalise(sys.argv[1])
    seconds = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_kb": before, "after_kb": after, "out_bytes": len(out), "seconds": seconds}))
""")


@pytest.fixture(scope="module")
def big_photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "IMG_6000x8000.jpg"
    subprocess.run([sys.executable, "-c", GENERATE, str(path)], check=True, timeout=300)
    return path


def _measure(path: Path, mode: str) -> dict[str, float]:
    # Through a shell that forks (no exec): Linux carries ru_maxrss across fork and exec, so a
    # child started straight from this (large) pytest process would report pytest's own peak.
    fresh = ["/bin/sh", "-c", '"$0" "$@"; exit $?']
    done = subprocess.run([*fresh, sys.executable, "-c", MEASURE, str(path), mode], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result: dict[str, float] = json.loads(done.stdout)
    return result


def test_a_20_mb_photo_keeps_memory_flat(big_photo: Path) -> None:
    size_mb = big_photo.stat().st_size / 1e6
    assert BIG_MB_RANGE[0] < size_mb < BIG_MB_RANGE[1]
    with Image.open(big_photo) as img:
        assert img.size == (6000, 8000)

    # Python-level allocations (tracemalloc): the file is never read into memory whole.
    tracemalloc.start()
    try:
        with open(big_photo, "rb") as fh:
            out = normalise(fh)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert opened(out).size == (1200, 1600)
    assert peak < 4 * 1024 * 1024, f"tracemalloc peak {peak / 1e6:.1f} MB"

    # The whole process, C allocations included (Pillow's pixel buffers): peak RSS growth.
    flat = _measure(big_photo, "draft")
    grew_mb = (flat["after_kb"] - flat["before_kb"]) / 1024
    full = _measure(big_photo, "no-draft")
    full_mb = (full["after_kb"] - full["before_kb"]) / 1024
    print(f"\n20 MB photo ({size_mb:.1f} MB, 6000x8000): RSS +{grew_mb:.0f} MB with draft "
          f"({flat['seconds']:.2f} s), +{full_mb:.0f} MB decoding in full ({full['seconds']:.2f} s); "
          f"tracemalloc peak {peak / 1e6:.2f} MB; out {flat['out_bytes'] / 1e3:.0f} KB")
    assert grew_mb < RSS_LIMIT_MB, f"RSS grew by {grew_mb:.0f} MB"
    # The control shows the measurement would catch a full-resolution decode (48 Mpx x 4 bytes).
    assert full_mb > RSS_LIMIT_MB, f"a full decode grew RSS by only {full_mb:.0f} MB"
    assert flat["out_bytes"] < os.path.getsize(big_photo) / 20
