"""Image files built to cost a decoder far more than their size suggests: the families hostile testing
found (issue 25) and their relatives, for the upload limits' tests, the bad-input catalogue and
`benchmarks/upload_cost.py`. Each builder takes the size or count to reach, so that tests build a few
hundred KB in milliseconds and the benchmark builds files at the upload limit."""

import io
import struct
import zlib

import numpy as np
from PIL import Image

SOS = b"\xff\xda"  # a JPEG scan's marker
DHT = b"\xff\xc4"  # a JPEG Huffman table's marker


def encoded(image: Image.Image, image_format: str, **options: object) -> bytes:
    """`image` saved as `image_format` (PIL's name) with PIL's `options`."""
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def noise(side: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A `side`² image of random pixels: what compresses worst, so the costliest legitimate decode."""
    bands = len(mode)
    values = np.random.default_rng(seed).integers(0, 256, (side, side, bands), dtype=np.uint8)
    return Image.fromarray(values[..., 0] if bands == 1 else values, mode)


def progressive_jpeg(side: int) -> bytes:
    """A flat grey `side`² progressive JPEG as PIL (libjpeg) writes it: ten scans."""
    return encoded(Image.new("RGB", (side, side), (120, 130, 140)), "JPEG", progressive=True, quality=90)


def repeated_scan_jpeg(scans: int, side: int = 2048) -> bytes:
    """A valid progressive JPEG whose last scan (an AC refinement, a few bytes of end-of-band runs, with
    its Huffman table) is repeated until the file has `scans` scans. libjpeg passes over every block of
    the picture once per scan: about 2.5 ms a scan at 2048² (on this 2-core CPU), for 39 bytes."""
    raw = progressive_jpeg(side)
    last = raw.rfind(DHT)
    assert last < raw.rfind(SOS), "the last scan has its own Huffman table"
    segment, end = raw[last:-2], raw[-2:]  # up to the end-of-image marker
    return raw[:-2] + segment * (scans - raw.count(SOS)) + end


def repeated_scan_jpeg_of(size: int, side: int = 2048) -> bytes:
    """`repeated_scan_jpeg` of about `size` bytes (16 MB: about 410,000 scans)."""
    raw = progressive_jpeg(side)
    segment = len(raw) - 2 - raw.rfind(DHT)
    return repeated_scan_jpeg(raw.count(SOS) + max(0, size - len(raw)) // segment, side)


def padded_jpeg(size: int, padding: bytes) -> bytes:
    """A small baseline JPEG with `padding` repeated after its first segment up to `size` bytes: fill
    bytes (`b"\\xff"`) or empty comments (`b"\\xff\\xfe\\x00\\x02"`), which PIL's marker reader takes
    one Python step each (and keeps every comment)."""
    raw = encoded(Image.new("RGB", (64, 64), "red"), "JPEG")
    first = 4 + struct.unpack(">H", raw[4:6])[0]  # SOI, then APP0's marker and length
    return raw[:first] + padding * ((size - len(raw)) // len(padding)) + raw[first:]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """A PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def with_chunks(png: bytes, chunks: bytes) -> bytes:
    """`png` with `chunks` inserted before its first image data chunk."""
    at = png.find(b"IDAT") - 4
    return png[:at] + chunks + png[at:]


def small_png() -> bytes:
    return encoded(Image.new("RGB", (64, 64), "red"), "PNG")


def empty_chunk_png(chunks: int) -> bytes:
    """A 64² PNG with `chunks` empty private chunks before its image data, which PIL reads one Python
    step each (and keeps every one): 1.3 M of them make 15.6 MB."""
    return with_chunks(small_png(), png_chunk(b"leRy", b"") * chunks)


def inflating_chunk_png(size: int) -> bytes:
    """A 64² PNG with ICC profile chunks of about 1 KB each that inflate to 1 MB, PIL's cap for one
    chunk (which it does not count against its budget for text): about 0.8 ms of zlib each."""
    bomb = png_chunk(b"iCCP", b"icc\0\0" + zlib.compress(bytes(1 << 20), 9))
    return with_chunks(small_png(), bomb * max(1, size // len(bomb)))


EXIF_POINTERS = (0x8769, 0x8825, 0xA005)  # tags that point to further directories


def exif_png(entries: int, orientation: int = 6) -> bytes:
    """A 64² PNG whose EXIF (an eXIf chunk) holds `entries` tags, the first its orientation: PIL parses
    each in Python and, when the orientation turns the image, writes them all out again (at most
    about 64,500 tags)."""
    numbers = [number for number in range(0x0300, 0x10000) if number not in EXIF_POINTERS]
    tags = [(0x0112, 3, 1, struct.pack("<HH", orientation, 0))]
    tags += [(number, 7, 4, bytes(4)) for number in numbers[: entries - 1]]
    ifd = struct.pack("<H", entries) + b"".join(struct.pack("<HHI4s", *tag) for tag in tags)
    exif = b"II*\0" + struct.pack("<I", 8) + ifd + bytes(4)
    return with_chunks(small_png(), png_chunk(b"eXIf", exif))


def many_frame_webp(size: int) -> bytes:
    """An animated WebP of 64² lossless frames repeated up to `size` bytes (16 MB: about 350,000
    frames, which libwebp's demuxer indexes before the first is decoded)."""
    frames = [Image.new("RGB", (64, 64), (shade, 0, 0)) for shade in (0, 255)]
    raw = encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    frame_at = raw.rfind(b"ANMF")
    frame = raw[frame_at:]
    body = raw[12:] + frame * max(0, (size - len(raw)) // len(frame))
    return b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body


def largest_png(side: int = 2048) -> bytes:
    """The costliest legitimate PNG: `side`² random RGB pixels (12.6 MB at 2048²)."""
    return encoded(noise(side), "PNG")


def largest_jpeg(side: int = 2048) -> bytes:
    """The costliest legitimate JPEG we found: `side`² random CMYK pixels (four full-size components),
    progressive (18 scans), quality 95: 14 MB at 2048²."""
    return encoded(noise(side, "CMYK"), "JPEG", progressive=True, quality=95, subsampling=0)


def transparent_png(side: int) -> bytes:
    """A `side`² random RGBA PNG whose left half is fully transparent (OpenAI's edit without a mask)."""
    pixels = np.asarray(noise(side, "RGBA")).copy()
    pixels[:, : side // 2, 3] = 0
    return encoded(Image.fromarray(pixels, "RGBA"), "PNG")
