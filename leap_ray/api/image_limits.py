"""The limits an uploaded image's bytes must keep before PIL reads them. PIL's readers take a Python
step (holding the GIL) per PNG chunk and per JPEG marker before the first scan, inflate every ICC
profile and compressed text chunk, and parse EXIF a tag at a time; libjpeg passes over the whole
picture once per progressive scan. So a 16 MB file of 1.3 M empty chunks, 16 M fill bytes or 410 k
repeated scans cost the ingress seconds to many minutes (issue 25; `benchmarks/upload_cost.py`
measures each family). Each check here is a C-speed count or a walk that stops at its limit, and
raises ValueError saying which limit the image breaks."""

import re

from PIL import Image

# libjpeg writes 10 scans for a colour progressive JPEG (6 for grey, 18 for CMYK), mozjpeg about as
# many, and an EXIF thumbnail or an MPO's second picture brings its own: 100 leaves room for unusual
# encoders while a file that repeats a cheap scan costs at most 100 passes over its blocks (about
# 0.25 s at 2048², where each of 410 k repeated scans cost 2.5 ms).
MAX_JPEG_SCANS = 100
# A camera's JPEG has a few dozen segments before its first scan (APPn, tables, an ICC profile in
# 64 KB pieces); PIL's reader takes a Python step for each, and for each fill or stray byte.
MAX_JPEG_HEADER_STEPS = 1024
# ICC profiles and compressed text, which PIL inflates up to 1 MB each (counting only readable text
# against its 64 MB budget): a legitimate PNG has a profile and a few texts.
MAX_PNG_INFLATED_CHUNKS = 16
# JPEG's own bound on EXIF (one 64 KB segment, about 5,400 tags), for PNG and WebP too: PIL parses
# EXIF a tag at a time to read the orientation, and writes it all out again when it turns the image.
MAX_EXIF_BYTES = 65_536

SOS = b"\xff\xda"  # a JPEG scan's marker: inside a scan's data a 0xFF byte is always followed by 0x00
WINDOW = 1 << 20  # bytes counted at a time: the GIL is free between counts
_FILL = re.compile(rb"\xff+")
_STANDALONE = frozenset({0x00, 0x01, *range(0xD0, 0xDA)})  # JPEG markers without a length
_INFLATED = frozenset({b"iCCP", b"zTXt", b"iTXt"})


def max_chunks(size: int) -> int:
    """The most chunks a PNG or WebP of `size` bytes may hold: 1,024 and one per 4 KB (5,120 at
    16 MB, where libpng's 8 KB data chunks make about 2,000)."""
    return 1024 + size // 4096


def check_structure(raw: bytes) -> None:
    """Raises ValueError when the file (a PNG, JPEG or WebP by its signature; anything else is left to
    PIL, which refuses it) breaks a limit on its structure. Reads no pixel."""
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        _check_png(raw)
    elif raw.startswith(b"\xff\xd8\xff"):
        _check_jpeg(raw)
    elif raw.startswith(b"RIFF") and raw[8:12] == b"WEBP":
        _check_webp(raw)


def check_exif(image: Image.Image) -> None:
    """Raises ValueError when the EXIF PIL found is over MAX_EXIF_BYTES: in a JPEG's segment, a PNG's
    eXIf chunk or its "Raw profile type exif" text (hex; ImageMagick's), a WebP's EXIF chunk. For after
    the pixels are read (a PNG may keep its EXIF after them) and before the EXIF is parsed."""
    size = max(len(image.info.get("exif") or b""), len(image.info.get("Raw profile type exif") or "") // 2)
    if size > MAX_EXIF_BYTES:
        raise ValueError(f"has {size} bytes of EXIF; the limit is {MAX_EXIF_BYTES}")


def _check_jpeg(raw: bytes) -> None:
    if _jpeg_header_steps(raw) > MAX_JPEG_HEADER_STEPS:  # first: a walk that stops at its limit
        raise ValueError(
            f"is a JPEG with more than {MAX_JPEG_HEADER_STEPS} markers, fill or stray bytes before "
            "its first scan"
        )
    if _scans(raw) > MAX_JPEG_SCANS:
        raise ValueError(f"is a JPEG of more than {MAX_JPEG_SCANS} scans")


def _scans(raw: bytes) -> int:
    """The scan markers (every scan, and any marker-like bytes inside metadata: an upper bound),
    counted a window at a time up to just past the limit: one count over 16 MB of 0xFF bytes holds
    the GIL about 50 ms."""
    scans = 0
    for start in range(0, len(raw), WINDOW):
        scans += raw.count(SOS, start, start + WINDOW + 1)  # a marker starting in this window
        if scans > MAX_JPEG_SCANS:
            break
    return scans


def _jpeg_header_steps(raw: bytes) -> int:
    """The steps PIL's reader takes before the first scan (one a marker, fill byte or stray byte),
    counted as it walks the segments, up to just past the limit."""
    position, steps = 2, 0
    while steps <= MAX_JPEG_HEADER_STEPS and position < len(raw):
        end = min(len(raw), position + MAX_JPEG_HEADER_STEPS + 2 - steps)  # no search past the limit
        if raw[position] != 0xFF:  # stray bytes: PIL steps over them one at a time
            following = raw.find(b"\xff", position, end)
            following = end if following < 0 else following
            steps, position = steps + following - position, following
            continue
        marker_at = _FILL.match(raw, position, end).end()  # 0xFF fill bytes, a step each, then the marker
        steps += marker_at - position
        if marker_at >= end or raw[marker_at] == SOS[1]:  # fill to the limit (or the end), or a scan
            break
        position = marker_at + 1
        if raw[marker_at] not in _STANDALONE:  # a segment: its length counts its own two bytes
            position += max(2, int.from_bytes(raw[position : position + 2], "big"))
    return steps


def _check_png(raw: bytes) -> None:
    limit, position, chunks, inflated = max_chunks(len(raw)), 8, 0, 0
    while position + 8 <= len(raw):
        chunks += 1
        if chunks > limit:
            raise ValueError(f"is a PNG of more than {limit} chunks (1,024 and one per 4 KB)")
        kind = raw[position + 4 : position + 8]
        inflated += kind in _INFLATED
        if inflated > MAX_PNG_INFLATED_CHUNKS:
            raise ValueError(
                f"is a PNG with more than {MAX_PNG_INFLATED_CHUNKS} compressed metadata chunks "
                "(ICC profiles, compressed text)"
            )
        if kind == b"IEND":
            return
        position += 12 + int.from_bytes(raw[position : position + 4], "big")


def _check_webp(raw: bytes) -> None:
    limit, position, chunks = max_chunks(len(raw)), 12, 0
    while position + 8 <= len(raw):
        chunks += 1
        if chunks > limit:
            raise ValueError(f"is a WebP of more than {limit} chunks or frames (1,024 and one per 4 KB)")
        size = int.from_bytes(raw[position + 4 : position + 8], "little")
        position += 8 + size + size % 2  # chunks are padded to an even length
