"""Image decoding with OpenCV: any file on disk to a 3-channel 8-bit RGB array, or a clear error.

OpenCV's IMREAD_COLOR already turns grayscale, CMYK JPEG, PNG with alpha (dropped, as PIL's
`convert("RGB")` does) and 16-bit PNG (top 8 bits) into 3-channel uint8; we add the RGB order
and error messages that name the file.

Bounded work on hostile files (docs/data.md, "Limits"), checked in this order:
- only a regular file is read: a FIFO, socket or device named `x.jpg` is refused from its
  `os.stat`, never opened (it would block the reader for good);
- at most MAX_FILE_BYTES are read;
- the size declared in the header, read without decoding (JPEG, PNG, BMP, WebP by our parsers,
  which skip what libjpeg skips; other formats through Pillow's lazy header parser, if installed)
  must be at most MAX_PIXELS pixels, with an aspect ratio of at most MAX_ASPECT: resizing the
  shorter side of a 1x8000 image to 256 would make a 256x2,048,000 image (1.5 GB);
- a JPEG may hold at most MAX_JPEG_SCANS scans, and scans x pixels at most MAX_SCAN_PIXELS: each
  scan of a progressive JPEG passes over the whole image, so a 57 KB file of 2048 x 2048 pixels
  with one tiny scan repeated 2,000 times decoded for 7.8 s (issue 23), and did so again each epoch;
- OpenCV's own cap (OPENCV_IO_MAX_IMAGE_PIXELS, set to MAX_PIXELS by `senet/__init__.py` before
  anything loads OpenCV) applies to the size its decoder reads, whether or not our parsers could:
  nothing bigger is allocated;
- the decoded array is checked again.
A file beyond any limit is a bad image (named; an error or skipped, per data.on_bad_image).
"""

from __future__ import annotations

import io
import os
import sys
import warnings

import numpy as np

from senet.data.errors import BadImageError
from senet.limits import regular_file_problem

# 64 Mi pixels (e.g. 8192 x 8192): 192 MiB as decoded RGB. Pillow refuses at 179 Mpx (540 MB), but
# a tool's memory must not double on one hostile image; the largest ImageNet image is 31 Mpx.
MAX_PIXELS = 1 << 26
# Longer side / shorter side. Panoramas reach ~10; 32 keeps a shorter-side resize to 256 under
# 256 x 8192 pixels (6 MiB).
MAX_ASPECT = 32
# Bytes read from one image file. An uncompressed 64 Mpx RGB BMP is 192 MiB.
MAX_FILE_BYTES = 256 << 20
# Scans in one JPEG: libjpeg-turbo's own limit for untrusted files (TJFLAG_LIMITSCANS, djpeg
# -maxscans). Encoders write 1 to 3 (baseline) or about 10 (progressive: libjpeg's default script).
MAX_JPEG_SCANS = 500
# Scans x pixels: the decoder's work. 32 full passes over the largest image allowed (MAX_PIXELS), about
# three times what a progressive JPEG of that size needs; at 2048 x 2048 it allows 512 scans.
MAX_SCAN_PIXELS = 32 * MAX_PIXELS

# OpenCV reads its cap once, when cv2 is loaded. `senet/__init__.py` sets it before any senet
# module (and so Paddle, which imports cv2) loads; this line covers a process that reaches this
# module first. `OPENCV_CAP_SET` is False when cv2 was loaded before either could set it: then a
# header we cannot parse is refused rather than decoded unbounded.
_cv2_was_loaded = "cv2" in sys.modules
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))
OPENCV_CAP_SET = not _cv2_was_loaded or bool(getattr(sys.modules.get("senet"), "OPENCV_CAP_SET", False))

import cv2  # noqa: E402  (after the environment variable above)

# OpenCV >= 4.10 decodes straight into RGB, saving a colour-conversion pass per image.
# IGNORE_ORIENTATION: like the PIL pipelines that published ImageNet accuracies, the EXIF
# orientation tag is not applied.
_RGB_FLAG = getattr(cv2, "IMREAD_COLOR_RGB", None)
RGB_DECODE = _RGB_FLAG is not None
DECODE_FLAGS = (_RGB_FLAG if RGB_DECODE else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

BAD_IMAGE_HINT = (
    "Fix or remove the file, or set -o data.on_bad_image=skip to skip bad images "
    "(they are counted and reported at the end of each epoch)."
)


def bad_image(path: str, reason: str) -> BadImageError:
    """The error for one undecodable file: names it, says why, and says what to do."""
    err = BadImageError(f"bad image {path}: {reason}. {BAD_IMAGE_HINT}")
    err.path = path
    return err


def _jpeg_size(b: memoryview) -> tuple[int, int] | None:
    """The frame size as libjpeg reads it: bytes before a marker that are not 0xFF are skipped (its
    "extraneous bytes before marker" warning), as are fill bytes and stuffed FF 00 pairs; the first
    SOF gives the size. None where libjpeg would fail (SOS or EOI before any SOF)."""
    i, n = 2, len(b)
    while i < n:
        if b[i] != 0xFF:  # garbage between segments: libjpeg skips it, so must we
            i += 1
            continue
        while i < n and b[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return None
        marker = b[i]
        i += 1
        if marker == 0x00 or marker == 0x01 or 0xD0 <= marker <= 0xD8:  # stuffed byte, TEM, RSTn, SOI
            continue
        if marker in (0xD9, 0xDA):  # EOI, or a scan before any frame header
            return None
        if i + 2 > n:
            return None
        length = int.from_bytes(b[i : i + 2], "big")
        # SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 7 > n:
                return None
            h = int.from_bytes(b[i + 3 : i + 5], "big")
            w = int.from_bytes(b[i + 5 : i + 7], "big")
            return (w, h) if h and w else None  # height 0 ("given later by DNL") is refused by libjpeg
        if length < 2:
            return None
        i += length
    return None


def _pillow_size(buf: np.ndarray) -> tuple[int, int] | None:
    """Pillow's lazy header parse (no pixel data decoded) for formats we do not parse (TIFF, PPM, ...)."""
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: our own limits decide
            with Image.open(io.BytesIO(buf.tobytes())) as im:
                return tuple(im.size)
    except Image.DecompressionBombError:
        return (1 << 31, 1)  # far beyond our limits either way
    except Exception:  # noqa: BLE001  (not an image Pillow knows: OpenCV and our cap decide)
        return None


def header_size(buf: np.ndarray) -> tuple[int, int] | None:
    """(width, height) declared in an image file's header, without decoding; None if unknown."""
    b = memoryview(buf)
    head = bytes(b[:32])
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(b)
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        if head[12:16] != b"IHDR":
            return None
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head[:2] == b"BM" and len(head) >= 26:
        if int.from_bytes(head[14:18], "little") == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
            return int.from_bytes(head[18:20], "little"), int.from_bytes(head[20:22], "little")
        return (
            abs(int.from_bytes(head[18:22], "little", signed=True)),
            abs(int.from_bytes(head[22:26], "little", signed=True)),
        )
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        chunk = head[12:16]
        if chunk == b"VP8X":
            return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
        if chunk == b"VP8 ":
            return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
        if chunk == b"VP8L":
            bits = int.from_bytes(head[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        return None
    return _pillow_size(buf)


def jpeg_scans(buf: np.ndarray) -> int:
    """Start-of-scan markers (FF DA) in a JPEG file, counted without decoding. Inside entropy-coded data
    an FF byte is always followed by 00 or a restart marker, so every FF DA there starts a scan; one in
    a metadata segment (an EXIF thumbnail's own scan) counts too, which only makes the bound stricter."""
    return bytes(buf).count(b"\xff\xda")


def scan_problem(scans: int, width: int, height: int) -> str | None:
    """Why a JPEG of `scans` scans over width x height pixels is refused (too much decoding work), or None."""
    if scans > MAX_JPEG_SCANS or scans * width * height > MAX_SCAN_PIXELS:
        return (
            f"is a JPEG of {scans:,} scans over {width}x{height} pixels, more decoding work than the "
            f"{MAX_JPEG_SCANS} scans or {MAX_SCAN_PIXELS:,} scan-pixels allowed (encoders write about 10; "
            "a progressive JPEG with a repeated scan?); re-encode it"
        )
    return None


def size_problem(width: int, height: int) -> str | None:
    """Why an image of width x height is refused (pixels, aspect ratio), or None."""
    if width * height > MAX_PIXELS:
        return f"is {width}x{height} pixels, more than the {MAX_PIXELS:,} allowed (a decompression bomb?); shrink it"
    if min(width, height) == 0 or max(width, height) / min(width, height) > MAX_ASPECT:
        return (
            f"is {width}x{height} pixels, an aspect ratio beyond the 1:{MAX_ASPECT} allowed (resizing its "
            "shorter side would make a huge image); crop it"
        )
    return None


def read_image_bytes(path: str) -> tuple[np.ndarray, tuple[int, int] | None]:
    """An image file's bytes and the (width, height) its header declares (None if no parser could read
    it), after every check that comes before decoding: a regular file, at most MAX_FILE_BYTES, the
    declared pixels and aspect ratio, and for a JPEG its scans. Every decoder of this project (OpenCV
    here, DALI in senet.data.dali) starts from this, so a limit added here holds for all of them."""
    problem = regular_file_problem(path)
    if problem:
        raise bad_image(path, "cannot be read (no such file, or a broken link)" if problem.missing else str(problem))
    try:
        nbytes = os.path.getsize(path)
        if nbytes > MAX_FILE_BYTES:
            raise bad_image(path, f"is {nbytes:,} bytes, more than the {MAX_FILE_BYTES:,} read from one image")
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise bad_image(path, f"cannot be read ({e.strerror or e})") from None
    if buf.size == 0:
        raise bad_image(path, "is an empty file (0 bytes)")
    size = header_size(buf)
    if size is not None:
        problem = size_problem(*size)
        if not problem and buf[:2].tobytes() == b"\xff\xd8":
            problem = scan_problem(jpeg_scans(buf), *size)
        if problem:
            raise bad_image(path, problem.replace("is ", "declares ", 1))
    return buf, size


def decode_image(path: str) -> np.ndarray:
    """Read and decode one image file to an RGB uint8 array [H, W, 3]; raise BadImageError if it can't.

    The limits in the module docstring bound the memory and time one file can take.
    """
    buf, size = read_image_bytes(path)
    if size is None and not OPENCV_CAP_SET:
        raise bad_image(
            path,
            "has a header whose size cannot be read before decoding, and OpenCV was loaded "
            "before senet could cap its decoder (import senet before cv2 and paddle)",
        )
    try:
        img = cv2.imdecode(buf, DECODE_FLAGS)
    except cv2.error as e:  # e.g. over OpenCV's own pixel cap, for a header our parsers did not read
        if "CV_IO_MAX_IMAGE_PIXELS" in str(e) or "CV_IO_MAX_IMAGE_WIDTH" in str(e) or "HEIGHT" in str(e):
            raise bad_image(
                path,
                f"declares more than the {MAX_PIXELS:,} pixels OpenCV may decode (a decompression bomb?); shrink it",
            ) from None
        raise bad_image(path, f"OpenCV refused it ({str(e).strip().splitlines()[-1]})") from None
    if img is None:
        raise bad_image(
            path,
            "is not a decodable image (corrupt, truncated, or not an image despite its "
            f"{os.path.splitext(path)[1] or 'missing'} extension)",
        )
    problem = size_problem(img.shape[1], img.shape[0])
    if problem:
        raise bad_image(path, f"decodes to {problem.removeprefix('is ')}")
    if not RGB_DECODE:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img
