"""Uploaded images are bounded before PIL decodes a pixel: files built to cost the decoder far more
than their size (repeated JPEG scans, empty PNG chunks, fill bytes, inflating chunks, EXIF of
thousands of tags, WebP of thousands of frames) are refused with a 422 naming the field; legitimate
files decode exactly as PIL reads them; a request's rules that need no pixels run before the one
decode, and a job keeps our PNG of the decoded pixels, not the client's bytes."""

import base64
import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageOps, PngImagePlugin
from pydantic import ValidationError

from leap_ray.api import image_limits
from leap_ray.api.image_limits import MAX_JPEG_SCANS, check_structure, max_chunks
from leap_ray.api.images import decode_image, open_image
from leap_ray.api.jobs import JobSubmission
from leap_ray.api.openai_images import OpenAIImageEditRequest
from leap_ray.api.sdxl import SDXLRequest
from leap_ray.config import LIMITS
from leap_ray.errors import InvalidRequest, invalid_request_from
from leap_ray.testing import hostile_images as hostile
from tests.helpers import refused_sdxl as refused

MAX_BYTES, MAX_SIDE = LIMITS.sdxl.max_image_bytes, LIMITS.sdxl.max_size
HEADER_STEPS = f"is a JPEG with more than {image_limits.MAX_JPEG_HEADER_STEPS} markers, fill or stray bytes before its first scan"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def zero_padded_jpeg() -> bytes:
    """Stray zero bytes between two segments, which PIL's reader skips one at a time."""
    return hostile.padded_jpeg(8_000, b"\0")


def chunked_png(raw: bytes, chunk_size: int) -> bytes:
    """`raw` (a PNG with one data chunk run) with its image data split into chunks of `chunk_size`."""
    first = raw.find(b"IDAT") - 4
    data, position = b"", first
    while raw[position + 4 : position + 8] == b"IDAT":
        length = struct.unpack(">I", raw[position : position + 4])[0]
        data += raw[position + 8 : position + 8 + length]
        position += 12 + length
    pieces = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
    return raw[:first] + b"".join(hostile.png_chunk(b"IDAT", piece) for piece in pieces) + raw[position:]


def hostile_cases() -> list[tuple[str, bytes, str]]:
    webp = hostile.many_frame_webp(60_000)
    chunks = hostile.empty_chunk_png(3_000)
    exif = hostile.exif_png(6_000)
    return [
        (
            "jpeg-repeated-scan",
            hostile.repeated_scan_jpeg(200, side=64),
            "is a JPEG of more than 100 scans",
        ),
        ("jpeg-fill-bytes", hostile.padded_jpeg(8_000, b"\xff"), HEADER_STEPS),
        ("jpeg-empty-comments", hostile.padded_jpeg(8_000, b"\xff\xfe\x00\x02"), HEADER_STEPS),
        ("jpeg-stray-bytes", zero_padded_jpeg(), HEADER_STEPS),
        (
            "png-empty-chunks",
            chunks,
            f"is a PNG of more than {max_chunks(len(chunks))} chunks (1,024 and one per 4 KB)",
        ),
        (
            "png-inflating-chunks",
            hostile.inflating_chunk_png(20_000),
            "is a PNG with more than 16 compressed metadata chunks (ICC profiles, compressed text)",
        ),
        (
            "png-exif-of-6000-tags",
            exif,
            f"has {6 + 8 + 2 + 12 * 6_000 + 4} bytes of EXIF; the limit is 65536",
        ),
        (
            "webp-many-frames",
            webp,
            f"is a WebP of more than {max_chunks(len(webp))} chunks or frames (1,024 and one per 4 KB)",
        ),
    ]


HOSTILE = hostile_cases()


@pytest.mark.parametrize(
    ("raw", "message"), [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE]
)
def test_each_hostile_family_is_refused_with_its_limit(raw, message):
    with pytest.raises(ValueError) as caught:
        decode_image(raw, MAX_BYTES, MAX_SIDE, "RGB")
    assert str(caught.value) == message
    for field in ("image", "mask_image"):
        error = refused(
            **{field: b64(raw)}, **({"image": b64(hostile.small_png())} if field == "mask_image" else {})
        )
        assert (error.param, error.message) == (field, f"{field}: {message}")


@pytest.mark.parametrize(
    "family",
    ["jpeg-repeated-scan", "jpeg-fill-bytes", "png-empty-chunks", "png-inflating-chunks", "webp-many-frames"],
)
def test_structural_limits_are_checked_before_pil_opens_the_file(family):
    raw = next(raw for name, raw, _ in HOSTILE if name == family)
    with pytest.raises(ValueError):
        check_structure(raw)


def test_a_jpeg_at_the_scan_limit_is_read_and_one_past_it_is_not():
    at_limit = hostile.repeated_scan_jpeg(MAX_JPEG_SCANS, side=64)
    assert decode_image(at_limit, MAX_BYTES, MAX_SIDE, "RGB").size == (64, 64)
    with pytest.raises(ValueError, match=f"more than {MAX_JPEG_SCANS} scans"):
        open_image(hostile.repeated_scan_jpeg(MAX_JPEG_SCANS + 1, side=64), MAX_BYTES, MAX_SIDE)


def as_pil_reads_it(raw: bytes, mode: str) -> np.ndarray:
    """What the decode was before the limits: PIL's, turned as EXIF says, converted."""
    return np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(raw))).convert(mode))


def texts() -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "a painter")
    info.add_text("parameters", "a long prompt " * 100, zip=True)
    info.add_itxt("Description", "une description", lang="fr")
    return info


LEGITIMATE = {
    "progressive-jpeg": hostile.encoded(hostile.noise(256), "JPEG", progressive=True, quality=90),
    "cmyk-progressive-jpeg": hostile.largest_jpeg(128),
    "png-of-1KB-data-chunks": chunked_png(hostile.encoded(hostile.noise(256), "PNG"), 1024),
    "png-with-a-profile-and-texts": hostile.encoded(
        hostile.noise(96, "RGBA"), "PNG", icc_profile=bytes(4000), pnginfo=texts()
    ),
    "animated-webp": hostile.many_frame_webp(3_000),
    "lossy-webp": hostile.encoded(hostile.noise(128), "WEBP", quality=80),
}


@pytest.mark.parametrize("name", list(LEGITIMATE))
def test_legitimate_files_decode_exactly_as_pil_reads_them(name):
    raw = LEGITIMATE[name]
    check_structure(raw)
    for mode in ("RGB", "L"):
        assert np.array_equal(
            np.asarray(decode_image(raw, MAX_BYTES, MAX_SIDE, mode)), as_pil_reads_it(raw, mode)
        )


def test_the_largest_png_in_libpngs_8KB_data_chunks_keeps_the_chunk_limit():
    raw = chunked_png(hostile.largest_png(), 8192)  # 12.6 MB in about 1,540 chunks
    check_structure(raw)
    assert raw.count(b"IDAT") > 1500


def test_the_decoded_image_carries_no_metadata():
    raw = hostile.encoded(Image.new("RGB", (64, 64)), "PNG", icc_profile=bytes(2000))
    assert SDXLRequest(prompt="x", image=b64(raw)).image.info == {}


@pytest.fixture
def decodes(monkeypatch) -> list[int]:
    """Counts the decodes of uploaded images (each turns its image as EXIF says, once)."""
    counted: list[int] = []
    transpose = ImageOps.exif_transpose

    def counting(image, **kwargs):
        counted.append(1)
        return transpose(image, **kwargs)

    monkeypatch.setattr(ImageOps, "exif_transpose", counting)
    return counted


def broken_png() -> bytes:
    """A valid header and signature, then image data that does not inflate: only decoding tells."""
    raw = hostile.encoded(Image.new("RGB", (64, 64), "red"), "PNG")
    at = raw.find(b"IDAT") - 4
    length = struct.unpack(">I", raw[at : at + 4])[0]
    return raw[:at] + hostile.png_chunk(b"IDAT", b"\x00" * length) + raw[at + 12 + length :]


def test_rules_that_need_no_pixels_are_checked_before_the_image_is_decoded(decodes):
    mask = b64(hostile.encoded(Image.new("L", (64, 64)), "PNG"))
    error = refused(image=b64(broken_png()), mask_image=mask, strength=0.1, num_inference_steps=5)
    assert error.param == "strength" and decodes == []
    assert (
        refused(image=b64(broken_png()), num_inference_steps=2, num_images_per_prompt=0).param
        == "num_images_per_prompt"
    )
    assert decodes == []
    error = refused(image=b64(broken_png()), strength=0.5)
    assert (error.param, error.message) == (
        "image",
        "image: is not an image in a format we read (png, jpeg, webp)",
    )


def test_an_uploads_pixel_budget_is_its_headers():
    big = b64(hostile.encoded(Image.new("1", (2048, 2048)), "PNG"))
    assert refused(image=big, num_images_per_prompt=2).param == "num_images_per_prompt"


def edit(raw: bytes, **fields: str) -> SDXLRequest:
    form = OpenAIImageEditRequest.model_validate(
        {"prompt": "a", "image": raw, "num_inference_steps": "4", **fields}
    )
    return SDXLRequest.model_validate(form.sdxl_input())


def transparent_left(side: int = 64) -> bytes:
    pixels = np.full((side, side, 4), 200, dtype=np.uint8)
    pixels[:, : side // 2, 3] = 0
    return hostile.encoded(Image.fromarray(pixels, "RGBA"), "PNG")


def test_an_edit_decodes_its_image_once_for_the_image_and_its_transparency_mask(decodes):
    request = edit(transparent_left())
    assert request.workflow == "inpaint" and len(decodes) == 1
    mask = np.asarray(request.mask_image)
    assert (mask[:, :32] == 255).all() and (mask[:, 32:] == 0).all()
    assert request.guidance_scale == 7.5  # diffusers' inpainting default, the workflow settled by the decode


def test_an_edit_of_an_opaque_image_with_alpha_is_an_img2img():
    opaque = hostile.encoded(Image.new("RGBA", (64, 64), (1, 2, 3, 255)), "PNG")
    request = edit(opaque, strength="0.5")
    assert (request.workflow, request.mask_image, request.guidance_scale) == ("img2img", None, 5.0)


def test_an_edit_that_keeps_no_step_is_refused_before_any_decode(decodes):
    with pytest.raises(ValidationError) as caught:
        edit(transparent_left(), strength="0.1", num_inference_steps="5")
    assert invalid_request_from(caught.value.errors()).param == "strength" and decodes == []


def test_an_edit_whose_transparency_mask_is_empty_has_its_steps_checked_as_an_img2img():
    opaque = hostile.encoded(Image.new("RGBA", (64, 64), (1, 2, 3, 255)), "PNG")
    # 2 steps keep one at inpainting's default strength (0.9999) but none at img2img's (0.3).
    with pytest.raises(ValidationError) as caught:
        edit(opaque, num_inference_steps="2")
    assert invalid_request_from(caught.value.errors()).param == "num_inference_steps"


@pytest.mark.parametrize(("field", "param"), [("image", "image"), ("mask", "mask")])
def test_a_hostile_edit_upload_is_refused_naming_the_openai_field(field, param):
    raw = hostile.repeated_scan_jpeg(200, side=64)
    fields = {"image": hostile.small_png(), field: raw}
    form = OpenAIImageEditRequest.model_validate({"prompt": "a", **fields})
    with pytest.raises(InvalidRequest) as caught:
        form.sdxl_input()
    assert (caught.value.param, caught.value.message) == (
        param,
        f"{param}: is a JPEG of more than 100 scans",
    )


def test_a_job_keeps_our_png_of_the_decoded_pixels_not_the_clients_bytes():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 96 wide, shown 64 wide: the stored PNG is the turned image
    photo = hostile.encoded(hostile.noise(96).crop((0, 0, 96, 64)), "JPEG", exif=exif)
    mask = hostile.encoded(Image.new("L", (64, 96), 255), "PNG")
    submission = JobSubmission(
        service="sdxl", input={"prompt": "a", "image": b64(photo), "mask_image": b64(mask)}
    )
    request = SDXLRequest.model_validate(submission.input).model_copy(update={"seed": 3})
    kept = submission.stored_input(request)
    assert kept["image"].startswith("data:image/png;base64,") and kept["mask_image"].startswith(
        "data:image/png;base64,"
    )
    assert (kept["prompt"], kept["seed"]) == ("a", 3)
    again = SDXLRequest.model_validate(kept)
    for name in ("image", "mask_image"):
        assert np.array_equal(np.asarray(getattr(again, name)), np.asarray(getattr(request, name)))
    assert (again.width, again.height) == (64, 96)


def test_a_job_without_images_keeps_its_input_and_the_seed():
    submission = JobSubmission(service="sdxl", input={"prompt": "a"})
    assert submission.stored_input(SDXLRequest(prompt="a", seed=9)) == {"prompt": "a", "seed": 9}
