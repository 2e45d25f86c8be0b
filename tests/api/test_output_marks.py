"""Outputs carry what they are: an image's parameters as AUTOMATIC1111 writes them (PNG text chunks;
EXIF UserComment in JPEG and WebP) with the request as JSON, a track's tags (title, comment,
software), each output its own request's, big values summarised, and the pixels and samples
untouched."""

import io
import json

import mutagen.id3
import numpy as np
import pytest
import soundfile
import torch
from mutagen.id3 import ID3
from PIL import ExifTags, Image

from leap_ray.api.audio import DecodedAudio, encode_audio
from leap_ray.api.audio_tags import WAV_TAG_BYTES
from leap_ray.api.common import offset_seed
from leap_ray.api.images import encode_image
from leap_ray.api.infotext import quote
from leap_ray.api.marks import UNICODE_PREFIX, exif_bytes, read_marks, request_record
from leap_ray.api.musicgen import MusicGenRequest
from leap_ray.api.sdxl import SDXLRequest, seeds_for
from leap_ray.config import MusicGenLimits

PIXELS = np.random.default_rng(0).random((64, 64, 3))
SMALL = {"height": 64, "width": 64, "num_inference_steps": 30}


def test_a_png_carries_a1111_parameters_and_the_request_as_json():
    request = SDXLRequest(
        prompt="a lighthouse",
        negative_prompt="blurry",
        guidance_scale=7.0,
        scheduler="euler",
        seed=1,
        **SMALL,
    )
    (marks,) = request.output_marks([1], "stabilityai/stable-diffusion-xl-base-1.0")
    png = Image.open(io.BytesIO(encode_image(PIXELS, "png", marks)))
    assert png.text["parameters"] == (
        "a lighthouse\nNegative prompt: blurry\n"
        "Steps: 30, Sampler: Euler, CFG scale: 7.0, Seed: 1, Size: 64x64, "
        "Model: stabilityai/stable-diffusion-xl-base-1.0"
    )
    record = json.loads(png.text["leap_ray"])
    assert record["request"]["prompt"] == "a lighthouse" and record["request"]["seed"] == 1
    assert record["model"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert (record["image"], record["seed"]) == (0, 1)
    assert png.text["Software"] == "leap_ray"


@pytest.mark.parametrize("image_format", ["jpeg", "webp"])
def test_jpeg_and_webp_carry_the_parameters_in_exif_user_comment_as_a1111_writes_it(image_format):
    request = SDXLRequest(prompt="ü café, 日本", seed=9, **SMALL)
    (marks,) = request.output_marks([9], "tiny:sdxl")
    data = encode_image(PIXELS, image_format, marks)
    image = Image.open(io.BytesIO(data))
    raw = image.getexif().get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment]
    # piexif's UserComment.dump(text, encoding="unicode"), which A1111 writes and reads back
    assert raw == UNICODE_PREFIX + marks.parameters.encode("utf-16-be")
    assert exif_bytes(marks)[6:8] == b"MM"  # big-endian EXIF, as the text's byte order
    assert read_marks(data) == {"parameters": marks.parameters}
    assert marks.parameters.startswith("ü café, 日本\nSteps: 30, CFG scale: 5.0, Seed: 9, Size: 64x64")
    assert image.getexif()[ExifTags.Base.Software] == "leap_ray"


@pytest.mark.parametrize("image_format", ["png", "jpeg", "webp"])
def test_marks_leave_the_pixels_as_they_were(image_format):
    (marks,) = SDXLRequest(prompt="a", seed=1, **SMALL).output_marks([1], "m")
    plain = Image.open(io.BytesIO(encode_image(PIXELS, image_format)))
    marked = Image.open(io.BytesIO(encode_image(PIXELS, image_format, marks)))
    assert np.array_equal(np.asarray(plain), np.asarray(marked))
    assert read_marks(encode_image(PIXELS, image_format)) == {}


def test_each_image_of_a_request_names_its_own_prompt_and_seed():
    request = SDXLRequest(
        prompt=["a fox", "the moon"],
        negative_prompt=["grey", "red"],
        num_images_per_prompt=2,
        seed=5,
        **SMALL,
    )
    marks = request.output_marks([5, 6, 7, 8], "tiny:sdxl")
    firsts = [(mark.title, mark.parameters.splitlines()[1], mark.record["seed"]) for mark in marks]
    assert firsts == [
        ("a fox", "Negative prompt: grey", 5),
        ("a fox", "Negative prompt: grey", 6),
        ("the moon", "Negative prompt: red", 7),
        ("the moon", "Negative prompt: red", 8),
    ]
    assert [mark.parameters.split("Seed: ")[1].split(",")[0] for mark in marks] == ["5", "6", "7", "8"]
    assert {mark.record["request"]["seed"] for mark in marks} == {5}  # the request: image 0's seed


@pytest.mark.parametrize("seed", [5, None], ids=["seeded", "seed-drawn"])
def test_the_parts_of_a_split_request_record_the_clients_request_and_each_images_index(seed):
    request = SDXLRequest(prompt=["a fox", "the moon"], num_images_per_prompt=3, seed=seed, **SMALL)
    parts = request.split(2)
    refined = [piece for part in parts for piece in part.split(1)]  # a refiner's smaller batches
    for pieces in (parts, refined):
        marks = [mark for part in pieces for mark in part.output_marks(seeds_for(part, part.seed), "m")]
        assert [mark.record["image"] for mark in marks] == list(range(6))
        whole = marks[0].record["request"]
        assert whole["num_images_per_prompt"] == 3 and whole["prompt"] == ["a fox", "the moon"]
        assert all(mark.record["request"] == whole for mark in marks)
        seeds = [mark.record["seed"] for mark in marks]
        assert seeds == [offset_seed(whole["seed"], index) for index in range(6)]
        assert [mark.title for mark in marks] == ["a fox"] * 3 + ["the moon"] * 3


def test_a_value_with_a_comma_colon_or_line_break_is_quoted_as_a1111_quotes_it():
    assert quote("tiny:sdxl") == '"tiny:sdxl"'
    assert quote("a, b") == '"a, b"'
    assert quote("plain") == "plain" and quote(7.5) == "7.5"
    (marks,) = SDXLRequest(prompt="a", seed=1, **SMALL).output_marks([1], "tiny:sdxl")
    assert marks.parameters.endswith('Model: "tiny:sdxl"')


def test_workflows_adapters_and_the_refiner_are_named_as_a1111_names_them():
    image = "data:image/png;base64," + __import__("base64").b64encode(encode_image(PIXELS, "png")).decode()
    request = SDXLRequest(
        prompt="ink",
        image=image,
        strength=0.5,
        loras=[{"name": "ink", "scale": 0.8}],
        refiner={"denoising_start": 0.7},
        scheduler="ddim",
        eta=0.3,
        seed=2,
        num_inference_steps=10,
    )
    (marks,) = request.output_marks([2], "base", refiner="refiner")
    assert marks.parameters.startswith("ink <lora:ink:0.8>\nSteps: 10, Sampler: DDIM")
    for pair in ("Denoising strength: 0.5", "Eta DDIM: 0.3", "Refiner: refiner", "Refiner switch at: 0.7"):
        assert pair in marks.parameters
    assert marks.record["request"]["image"] == "<image 64x64>"
    assert (marks.record["model"], marks.record["refiner"]) == ("base", "refiner")


def test_tensors_uploads_audio_and_callbacks_are_summarised_never_embedded():
    latents = torch.zeros(1, 4, 8, 8)
    request = SDXLRequest(prompt="a", latents=latents, callback_on_step_end=lambda *a: {}, seed=1, **SMALL)
    record = request_record(request)
    assert record["latents"] == "<tensor float32 [1, 4, 8, 8]>"
    assert record["callback_on_step_end"] == "<callable>"
    json.dumps(record)  # plain JSON all through
    melody = DecodedAudio(np.zeros(16000, dtype=np.float32), 16000)
    track = MusicGenRequest(prompt="a", melody=melody, duration=1)
    assert track.output_marks(3, "m").record["request"]["melody"] == "<audio 1.00 s at 16000 Hz>"


@pytest.mark.parametrize("audio_format", ["wav", "flac", "ogg", "mp3"])
def test_a_track_with_an_empty_prompt_is_tagged_without_a_title(audio_format):
    """libsndfile refuses an empty string ("bad string"): found by fuzzing, as a 503 after the model ran."""
    marks = MusicGenRequest(prompt="", duration=1, format=audio_format).output_marks(seed=1, model="m")
    data = encode_audio(np.zeros(32000, dtype=np.float32), 32000, audio_format, marks)
    if audio_format == "mp3":
        tags = mutagen.id3.ID3(io.BytesIO(data))
        assert "TIT2" not in tags and json.loads(str(tags.getall("COMM")[0]))["request"]["prompt"] == ""
    else:
        with soundfile.SoundFile(io.BytesIO(data)) as file:
            assert file.title == "" and json.loads(file.comment)["request"]["prompt"] == ""


def test_how_an_answer_travels_is_not_recorded_so_one_image_is_one_file():
    plain = SDXLRequest(prompt="a", seed=1, **SMALL)
    streamed = SDXLRequest(prompt="a", seed=1, stream=True, preview_every=2, **SMALL)
    assert request_record(streamed) == request_record(plain) and "stream" not in request_record(plain)
    track, streamed_track = (MusicGenRequest(prompt="a", duration=1, stream=flag) for flag in (False, True))
    assert track.output_marks(3, "m").record == streamed_track.output_marks(3, "m").record


@pytest.mark.parametrize("audio_format", ["wav", "flac", "ogg", "mp3"])
def test_a_track_is_tagged_with_its_prompt_its_request_and_the_software(audio_format):
    request = MusicGenRequest(prompt="lo-fi beat, warm piano", duration=1, format=audio_format)
    marks = request.output_marks(seed=42, model="facebook/musicgen-melody")
    waveform = np.random.default_rng(1).uniform(-0.5, 0.5, 32000).astype(np.float32)
    data = encode_audio(waveform, 32000, audio_format, marks)
    with soundfile.SoundFile(io.BytesIO(data)) as file:
        tags = file.copy_metadata()
    assert tags["title"] == "lo-fi beat, warm piano"
    record = json.loads(tags["comment"])
    assert record["request"]["seed"] == 42 and record["model"] == "facebook/musicgen-melody"
    assert record["request"]["prompt"] == "lo-fi beat, warm piano"
    if audio_format != "mp3":  # an MP3's software: read_tags below (libsndfile reads LAME's)
        assert tags["software"].startswith("leap_ray")
    if audio_format in ("wav", "flac"):  # lossless: the same samples as a file without tags
        plain, _ = soundfile.read(io.BytesIO(encode_audio(waveform, 32000, audio_format)))
        tagged, _ = soundfile.read(io.BytesIO(data))
        assert np.array_equal(plain, tagged)


def read_tags(data: bytes, audio_format: str) -> dict[str, str]:
    """A track's title, comment and software as other tools read them: ID3 through mutagen for an
    MP3 (its text decoded as its frames say), libsndfile's reading otherwise."""
    if audio_format == "mp3":
        tags = ID3(io.BytesIO(data))
        return {
            "title": str(tags["TIT2"]),
            "comment": tags.getall("COMM")[0].text[0],
            "software": str(tags["TSSE"]),
        }
    with soundfile.SoundFile(io.BytesIO(data)) as file:
        return file.copy_metadata()


LONGEST = MusicGenLimits().max_prompt_chars


@pytest.mark.parametrize("audio_format", ["wav", "flac", "ogg", "mp3"])
@pytest.mark.parametrize(
    "prompt",
    ["café au lait, ünïcödé 🎹", ("lo-fi " * LONGEST)[: LONGEST - 1] + "!", "é" * LONGEST, "🎹" * LONGEST],
    ids=["non-ascii", "longest-ascii", "longest-two-byte", "longest-four-byte"],
)
def test_every_tag_survives_any_prompt_in_every_format(audio_format, prompt):
    request = MusicGenRequest(prompt=prompt, duration=0.1, format=audio_format)
    marks = request.output_marks(seed=42, model="facebook/musicgen-melody")
    data = encode_audio(np.zeros(3200, dtype=np.float32), 32000, audio_format, marks)
    tags = read_tags(data, audio_format)
    assert tags["software"].startswith("leap_ray")
    record = json.loads(tags["comment"])  # whole, or shortened and still JSON
    assert record["model"] == "facebook/musicgen-melody" and record["request"]["seed"] == 42
    cut = audio_format == "wav" and len(prompt) == LONGEST  # cut to what a WAV keeps
    if cut:
        assert len(tags["title"].encode()) <= WAV_TAG_BYTES and len(tags["comment"].encode()) <= WAV_TAG_BYTES
        assert record["truncated"] is True and prompt.startswith(record["request"]["prompt"][:-1])
        assert record["request"]["prompt"].endswith("…")
    else:
        assert "truncated" not in record and record["request"]["prompt"] == prompt
    if cut and len(prompt.encode()) > WAV_TAG_BYTES:
        assert tags["title"].endswith("…") and prompt.startswith(tags["title"][:-1])
    else:
        assert tags["title"] == prompt
