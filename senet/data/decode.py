"""Image decoding with OpenCV: any file on disk to a 3-channel 8-bit RGB array, or a clear error.

OpenCV's IMREAD_COLOR already turns grayscale, CMYK JPEG, PNG with alpha (dropped, as PIL's
`convert("RGB")` does) and 16-bit PNG (top 8 bits) into 3-channel uint8; we add the RGB order,
a decompression-bomb guard that reads the declared size from the header before decoding, and
error messages that name the file.
"""

from __future__ import annotations

import os

import numpy as np

from senet.data.errors import BadImageError

# Pillow's DecompressionBombError threshold (2 x 89.5 Mpx): ~540 MB of RGB per image.
MAX_PIXELS = 178_956_970

# OpenCV reads this cap once, when cv2 is loaded; it covers formats whose header we do not parse
# (TIFF, PPM). Effective only if nothing imported cv2 before this module.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))

import cv2  # noqa: E402  (after the environment variable above)

# OpenCV >= 4.10 decodes straight into RGB, saving a colour-conversion pass per image.
# IGNORE_ORIENTATION: like the PIL pipelines that published ImageNet accuracies, the EXIF
# orientation tag is not applied.
_RGB_FLAG = getattr(cv2, "IMREAD_COLOR_RGB", None)
RGB_DECODE = _RGB_FLAG is not None
DECODE_FLAGS = (_RGB_FLAG if RGB_DECODE else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

BAD_IMAGE_HINT = ("Fix or remove the file, or set -o data.on_bad_image=skip to skip bad images "
                  "(they are counted and reported at the end of each epoch).")


def bad_image(path: str, reason: str) -> BadImageError:
    """The error for one undecodable file: names it, says why, and says what to do."""
    err = BadImageError(f"bad image {path}: {reason}. {BAD_IMAGE_HINT}")
    err.path = path
    return err


def _jpeg_size(b: memoryview) -> tuple[int, int] | None:
    i, n = 2, len(b)
    while i + 9 <= n:
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        # SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h = int.from_bytes(b[i + 5:i + 7], "big")
            w = int.from_bytes(b[i + 7:i + 9], "big")
            return (w, h) if h else None  # height 0 means "given later by DNL"
        if marker == 0xDA:  # start of scan without a frame header first
            return None
        i += 2 + int.from_bytes(b[i + 2:i + 4], "big")
    return None


def header_size(buf: np.ndarray) -> tuple[int, int] | None:
    """(width, height) declared in a JPEG, PNG, BMP or WebP header, without decoding; None if unknown."""
    b = memoryview(buf)
    head = bytes(b[:32])
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(b)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head[:2] == b"BM" and len(head) >= 26:
        return (abs(int.from_bytes(head[18:22], "little", signed=True)),
                abs(int.from_bytes(head[22:26], "little", signed=True)))
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


def decode_image(path: str) -> np.ndarray:
    """Read and decode one image file to an RGB uint8 array [H, W, 3]; raise BadImageError if it can't."""
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise bad_image(path, f"cannot be read ({e.strerror or e})") from None
    if buf.size == 0:
        raise bad_image(path, "is an empty file (0 bytes)")
    size = header_size(buf)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise bad_image(path, f"declares {size[0]}x{size[1]} pixels, more than the {MAX_PIXELS:,} allowed "
                              "(a decompression bomb?)")
    try:
        img = cv2.imdecode(buf, DECODE_FLAGS)
    except cv2.error as e:  # e.g. over OpenCV's own pixel cap for formats we do not parse
        raise bad_image(path, f"OpenCV refused it ({str(e).strip().splitlines()[-1]})") from None
    if img is None:
        raise bad_image(path, "is not a decodable image (corrupt, truncated, or not an image despite its "
                              f"{os.path.splitext(path)[1] or 'missing'} extension)")
    if not RGB_DECODE:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img
