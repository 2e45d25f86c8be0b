"""How a model deployment marks what it encodes (leap_ray.serve.outputs, leap_ray.serve.credentials):
each output's own parameters unless the operator turns them off, C2PA content credentials when a
signer is configured (signed off the event loop, proved at start-up: a signer that does not work stops
the replica, naming the setting), and the marks reaching a client through the HTTP answer."""

import asyncio
import datetime
import io
import json
import socket
import threading
import time
from pathlib import Path

import c2pa
import numpy as np
import pytest
import soundfile
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from PIL import Image

import tests.helpers
from leap_ray.api.marks import read_marks
from leap_ray.api.musicgen import MusicGenRequest
from leap_ray.api.sdxl import SDXLRequest
from leap_ray.config import AppConfig, ContentCredentialsSettings, ModelSettings, OutputSettings
from leap_ray.engines.results import MusicGenResult, SDXLResult
from leap_ray.serve import credentials
from leap_ray.serve.credentials import TRAINED_ALGORITHMIC_MEDIA, ContentCredentials
from leap_ray.serve.model_shim import ModelShim
from leap_ray.serve.outputs import OutputMarker, encode_images, encode_track
from tests.helpers import call, make_app

SMALL = {"height": 64, "width": 64, "num_inference_steps": 4}
PIXELS = np.random.default_rng(0).random((64, 64, 3))
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
AUDIO_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg"}


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, key, issuer: x509.Name, issuer_key, *, ca: bool, usage=None):
    """An X.509 v3 certificate as c2pa wants one: a CA that signs certificates, or an end entity
    with digitalSignature and an extended key usage C2PA accepts (emailProtection)."""
    now = datetime.datetime.now(datetime.UTC)
    uses = {name: False for name in x509.KeyUsage.__init__.__code__.co_varnames[1:10]}
    uses |= {"key_cert_sign": True, "crl_sign": True} if ca else {"digital_signature": True}
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(x509.KeyUsage(**uses), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def signer_files(tmp_path_factory) -> dict[str, Path]:
    """A test-only CA and the ES256 signing certificate it issued, written as an operator would: the
    chain (leaf, then the CA), the leaf's key; the CA on its own (a reader's trust anchor), and a key
    that is not the leaf's."""
    folder = tmp_path_factory.mktemp("c2pa")
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("leap_ray test CA", ca_key, _name("leap_ray test CA"), ca_key, ca=True)
    usage = [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    leaf = _certificate("leap_ray test signer", key, ca.subject, ca_key, ca=False, usage=usage)
    files = {
        "chain": _pem(leaf) + _pem(ca),
        "key": _key_pem(key),
        "ca": _pem(ca),
        "other_key": _key_pem(ec.generate_private_key(ec.SECP256R1())),
    }
    for name, data in files.items():
        (folder / f"{name}.pem").write_bytes(data)
    return {name: folder / f"{name}.pem" for name in files}


def signer(files: dict[str, Path], **changes: object) -> ContentCredentialsSettings:
    settings = {"certificate_chain_file": str(files["chain"]), "private_key_file": str(files["key"])}
    return ContentCredentialsSettings(**settings | changes)


def credentials_of(data: bytes, media_type: str, files: dict[str, Path]) -> tuple[str, dict]:
    """The output's C2PA validation state, the test CA trusted, and its active manifest."""
    context = c2pa.Context.from_dict({"trust": {"trust_anchors": files["ca"].read_text()}})
    with c2pa.Reader(media_type, io.BytesIO(data), context=context) as reader:
        return reader.get_validation_state(), reader.get_active_manifest()


def created_action(manifest: dict) -> dict:
    (assertion,) = [item for item in manifest["assertions"] if item["label"].startswith("c2pa.actions")]
    (action,) = assertion["data"]["actions"]
    return action


def sdxl_result(seeds: list[int]) -> SDXLResult:
    return SDXLResult(images=[PIXELS] * len(seeds), seeds=seeds, timings={}, batch_size=len(seeds))


def track_result(seed: int = 7) -> MusicGenResult:
    waveform = np.random.default_rng(seed).uniform(-0.5, 0.5, 16000).astype(np.float32)
    return MusicGenResult(waveform=waveform, sample_rate=32000, seed=seed, timings={}, batch_size=1)


@pytest.mark.parametrize("image_format", ["png", "jpeg", "webp"])
def test_signed_images_carry_valid_credentials_naming_a_trained_algorithm_and_the_model(
    signer_files, image_format
):
    marker = OutputMarker("tiny:sdxl", OutputSettings(content_credentials=signer(signer_files)))
    request = SDXLRequest(prompt="a lighthouse", seed=3, output_format=image_format, **SMALL)
    (image,) = encode_images(request, sdxl_result([3]), marker).images
    state, manifest = credentials_of(image, MEDIA_TYPES[image_format], signer_files)
    assert state == "Trusted"  # signature, chain and hashes valid, the test CA a trust anchor
    action = created_action(manifest)
    assert action["action"] == "c2pa.created" and action["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert action["parameters"]["model"] == "tiny:sdxl" and action["softwareAgent"]["name"] == "tiny:sdxl"
    assert manifest["claim_generator_info"][0]["name"] == "leap_ray"
    assert "Seed: 3" in read_marks(image)["parameters"]  # the parameters survive the signing


@pytest.mark.parametrize("audio_format", ["wav", "flac", "mp3"])
def test_signed_tracks_carry_valid_credentials(signer_files, audio_format):
    marker = OutputMarker("tiny:musicgen", OutputSettings(content_credentials=signer(signer_files)))
    request = MusicGenRequest(prompt="lo-fi", duration=0.5, format=audio_format)
    audio = encode_track(request, track_result(), marker).audio
    state, manifest = credentials_of(audio, AUDIO_TYPES[audio_format], signer_files)
    assert state == "Trusted"
    assert created_action(manifest)["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA


def test_an_ogg_track_which_cannot_carry_credentials_is_left_unsigned(signer_files):
    marker = OutputMarker("tiny:musicgen", OutputSettings(content_credentials=signer(signer_files)))
    request = MusicGenRequest(prompt="lo-fi", duration=0.5, format="ogg")
    audio = encode_track(request, track_result(), marker).audio
    assert marker.credentials.sign(audio, "audio/ogg", "tiny:musicgen") is audio
    assert read_track_title(audio) == "lo-fi"


def read_track_title(audio: bytes) -> str:
    with soundfile.SoundFile(io.BytesIO(audio)) as file:
        return file.title


def test_a_refined_image_names_the_base_model_and_the_refiner(signer_files):
    marker = OutputMarker("refiner-model", OutputSettings(content_credentials=signer(signer_files)))
    request = SDXLRequest(prompt="a", seed=1, refiner={}, **SMALL)
    (image,) = encode_images(request, sdxl_result([1]), marker, base_model="base-model").images
    assert "Model: base-model" in read_marks(image)["parameters"]
    assert "Refiner: refiner-model" in read_marks(image)["parameters"]
    parameters = created_action(credentials_of(image, "image/png", signer_files)[1])["parameters"]
    assert parameters == {"model": "base-model", "refiner": "refiner-model"}


@pytest.mark.parametrize(
    ("changes", "names"),
    [
        ({"certificate_chain_file": "/nowhere/chain.pem"}, "certificate_chain_file"),
        ({"private_key_file": "/nowhere/key.pem"}, "private_key_file"),
        ({"private_key_file": "other_key"}, "content_credentials"),
        ({"algorithm": "ps256"}, "content_credentials"),
        ({"certificate_chain_file": "key"}, "content_credentials"),
    ],
    ids=["missing-chain", "missing-key", "key-not-the-certificates", "wrong-algorithm", "no-certificate"],
)
def test_a_signer_that_does_not_work_stops_the_start_naming_the_setting(signer_files, changes, names):
    changes = {field: str(signer_files.get(value, value)) for field, value in changes.items()}
    with pytest.raises(ValueError, match=f"outputs.content_credentials.*{names}|{names}") as error:
        OutputMarker("tiny:sdxl", OutputSettings(content_credentials=signer(signer_files, **changes)))
    assert "outputs.content_credentials" in str(error.value)


def test_the_operator_can_leave_parameters_out_of_files():
    request = SDXLRequest(prompt="secret prompt", seed=1, **SMALL)
    (image,) = encode_images(
        request, sdxl_result([1]), OutputMarker("m", OutputSettings(parameters=False))
    ).images
    assert read_marks(image) == {}
    (marked,) = encode_images(request, sdxl_result([1]), OutputMarker("m")).images
    assert "secret prompt" in read_marks(marked)["parameters"]


def test_the_application_config_takes_an_outputs_section(signer_files):
    config = AppConfig.model_validate(
        {"outputs": {"parameters": False, "content_credentials": signer(signer_files).model_dump()}}
    )
    assert config.outputs.parameters is False and config.outputs.content_credentials.algorithm == "es256"
    assert AppConfig().outputs == OutputSettings()  # parameters on, no credentials


LONGER = SMALL | {"num_inference_steps": 10}
SIMULATED = ModelSettings(
    model="simulated-sdxl",
    engine="leap_ray.testing.simulated:SimulatedSDXLEngine",
    engine_kwargs={"step_s": 0.02, "image_step_s": 0.0, "overhead_s": 0.0},
)


def test_requests_sharing_a_batch_each_get_their_own_marks_signed_off_the_event_loop(
    signer_files, monkeypatch
):
    marker = OutputMarker(SIMULATED.model, OutputSettings(content_credentials=signer(signer_files)))
    signing_threads = []
    sign = ContentCredentials.sign

    def recorded(self, *args, **kwargs):
        signing_threads.append(threading.current_thread())
        return sign(self, *args, **kwargs)

    monkeypatch.setattr(ContentCredentials, "sign", recorded)
    shim = ModelShim(
        SIMULATED, "unused:Engine", lambda request, result: encode_images(request, result, marker)
    )
    requests = [
        SDXLRequest(prompt="a red fox", seed=1, **LONGER),
        SDXLRequest(prompt="the moon", negative_prompt="grey", num_images_per_prompt=2, seed=20, **LONGER),
    ]

    async def both():
        return await asyncio.gather(
            *(shim.run(request, None) for request in requests)
        ), threading.current_thread()

    outputs, loop_thread = asyncio.run(both())
    assert [output.batch_size for output in outputs] == [2, 2]  # both requests in one running batch
    fox, moon = ([json.loads(read_marks(image)["leap_ray"]) for image in output.images] for output in outputs)
    assert [(record["request"]["prompt"], record["seed"]) for record in fox] == [("a red fox", 1)]
    assert [(record["request"]["prompt"], record["seed"]) for record in moon] == [
        ("the moon", 20),
        ("the moon", 21),
    ]
    assert "Negative prompt: grey" not in read_marks(outputs[0].images[0])["parameters"]
    assert len(signing_threads) == 3 and loop_thread not in signing_threads


def test_an_http_png_answer_carries_the_parameters_chunk(tmp_path, monkeypatch):
    """Through the in-process app: the model side's bytes (encoded here as a deployment encodes them)
    reach the client whole, chunks and all."""

    def encoded(request):
        if not isinstance(request, SDXLRequest):
            return stub_output(request)
        return encode_images(request, sdxl_result(tests.helpers.seeds_of(request)), OutputMarker("tiny:sdxl"))

    stub_output = tests.helpers.stub_output
    monkeypatch.setattr(tests.helpers, "stub_output", encoded)
    app, _ = make_app(tmp_path)
    body = {"prompt": "a lighthouse at dawn", "seed": 11, **SMALL}
    response = call(app, "POST", "/v1/sdxl", json=body, headers={"Accept": "image/png"})
    assert response.status_code == 200 and response.headers["x-seed"] == "11"
    marks = read_marks(response.content)
    assert marks["parameters"].startswith(
        "a lighthouse at dawn\nSteps: 4, CFG scale: 5.0, Seed: 11, Size: 64x64"
    )
    assert json.loads(marks["leap_ray"])["request"]["prompt"] == "a lighthouse at dawn"


def _all_encodings(text: str) -> list[bytes]:
    return [text.encode(codec) for codec in ("utf-8", "utf-16-be", "utf-16-le")]


@pytest.mark.parametrize("source", ["/srv/models/private-finetune", "tmp-folder"], ids=["absent", "present"])
def test_a_local_model_folder_never_appears_in_an_output(signer_files, tmp_path, source):
    if source == "tmp-folder":
        source = str(tmp_path / "srv" / "models" / "private-finetune")
        Path(source).mkdir(parents=True)
    marker = OutputMarker(source, OutputSettings(content_credentials=signer(signer_files)))
    outputs = [
        *(
            encode_images(
                SDXLRequest(prompt="a", seed=1, output_format=f, **SMALL), sdxl_result([1]), marker
            ).images[0]
            for f in ("png", "jpeg", "webp")
        ),
        *(
            encode_track(MusicGenRequest(prompt="a", duration=0.5, format=f), track_result(), marker).audio
            for f in ("wav", "flac", "ogg", "mp3")
        ),
    ]
    folder = str(Path(source).parent)
    for data in outputs:
        assert not any(leaked in data for leaked in _all_encodings(folder))
    assert "Model: private-finetune" in read_marks(outputs[0])["parameters"]
    assert created_action(credentials_of(outputs[0], "image/png", signer_files)[1])["parameters"] == {
        "model": "private-finetune"
    }


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        ("stabilityai/stable-diffusion-xl-base-1.0", "stabilityai/stable-diffusion-xl-base-1.0"),
        ("tiny:sdxl", "tiny:sdxl"),
        ("/srv/models/private-finetune/", "private-finetune"),
        ("~/models/sdxl", "sdxl"),
    ],
    ids=["hub-id", "tiny", "absolute-folder", "home-folder"],
)
def test_outputs_name_a_model_by_a_safe_display_name(source, shown):
    assert OutputMarker(source).model == shown


def test_the_operator_names_a_model_in_outputs():
    settings = OutputSettings(model_names={"/srv/models/private-finetune": "acme-sdxl-v2"})
    assert OutputMarker("/srv/models/private-finetune", settings).model == "acme-sdxl-v2"
    assert AppConfig.model_validate({"outputs": {"model_names": {"acme/secret": "ours"}}}).outputs.model_names


@pytest.fixture(scope="module")
def self_signed_files(tmp_path_factory) -> dict[str, Path]:
    """An end-entity certificate (digitalSignature, emailProtection) that signed itself, and its key."""
    folder = tmp_path_factory.mktemp("self-signed")
    key = ec.generate_private_key(ec.SECP256R1())
    usage = [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    leaf = _certificate(
        "leap_ray self-signed", key, _name("leap_ray self-signed"), key, ca=False, usage=usage
    )
    (folder / "chain.pem").write_bytes(_pem(leaf))
    (folder / "key.pem").write_bytes(_key_pem(key))
    return {"chain": folder / "chain.pem", "key": folder / "key.pem"}


def test_a_self_signed_certificate_stops_the_start_naming_the_chain(self_signed_files):
    with pytest.raises(
        ValueError, match=r"outputs.content_credentials.certificate_chain_file: .*self-signed"
    ):
        OutputMarker("tiny:sdxl", OutputSettings(content_credentials=signer(self_signed_files)))


DOWN_TSA = "http://user:secret@127.0.0.1:9/stamp"  # the discard port: nothing answers


class Count:
    def __init__(self) -> None:
        self.value = 0

    def inc(self, value: float = 1.0, tags: dict | None = None) -> None:
        self.value += value


def test_a_time_stamp_authority_down_signs_without_a_time_stamp_logged_and_counted(
    signer_files, monkeypatch, caplog
):
    count = Count()
    monkeypatch.setattr(credentials.metrics, "unstamped_signatures", lambda: count)
    settings = OutputSettings(content_credentials=signer(signer_files, timestamp_url=DOWN_TSA))
    marker = OutputMarker("tiny:sdxl", settings)  # the start too: a TSA outage stops no replica
    request = SDXLRequest(prompt="a", seed=1, **SMALL)
    (image,) = encode_images(request, sdxl_result([1]), marker).images
    state, manifest = credentials_of(image, "image/png", signer_files)
    assert state == "Trusted" and created_action(manifest)["parameters"] == {"model": "tiny:sdxl"}
    assert count.value == 2  # the start-up check's signature and the output's
    warnings = [record.getMessage() for record in caplog.records if "time stamp" in record.getMessage()]
    assert warnings and not any("127.0.0.1" in text or "secret" in text for text in warnings)


@pytest.fixture
def silent_tsa():
    """A time-stamp authority that accepts connections and never answers; yields its URL and the
    connections it took."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    connections: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connections.append(listener.accept()[0])
            except TimeoutError:
                continue

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/stamp", connections
    stop.set()
    acceptor.join()
    for connection in [*connections, listener]:
        connection.close()


TSA_WAIT_S = 1.0  # the tests' timestamp_timeout_s (the default is 5 s; c2pa's own, 30 s)


def png_bytes() -> bytes:
    image = io.BytesIO()
    Image.new("RGB", (8, 8)).save(image, format="PNG")
    return image.getvalue()


def timed_sign(signer_: ContentCredentials, data: bytes) -> tuple[bytes, float]:
    started = time.monotonic()
    signed = signer_.sign(data, "image/png", "tiny:sdxl")
    return signed, time.monotonic() - started


def test_a_silent_time_stamp_authority_costs_one_wait_then_outputs_sign_at_once_until_the_retry(
    signer_files, silent_tsa, monkeypatch
):
    url, connections = silent_tsa
    count = Count()
    monkeypatch.setattr(credentials.metrics, "unstamped_signatures", lambda: count)
    settings = signer(
        signer_files, timestamp_url=url, timestamp_timeout_s=TSA_WAIT_S, timestamp_retry_after_s=2
    )
    started = time.monotonic()
    signer_ = ContentCredentials(settings)  # its start-up check meets the silence: one wait
    assert TSA_WAIT_S <= time.monotonic() - started < 3 * TSA_WAIT_S
    asked = len(connections)
    for _ in range(3):  # within the retry's wait: no round trip, no wait
        signed, took = timed_sign(signer_, png_bytes())
        assert took < TSA_WAIT_S / 4 and credentials_of(signed, "image/png", signer_files)[0] == "Trusted"
    assert len(connections) == asked and count.value == 4
    time.sleep(2)
    _, took = timed_sign(signer_, png_bytes())  # the retry asks the authority again, and waits again
    assert took >= TSA_WAIT_S and len(connections) > asked and count.value == 5


def test_two_outputs_wait_for_the_time_stamp_authority_side_by_side(signer_files, silent_tsa):
    url, _ = silent_tsa
    # No retry wait: every signature asks the (silent) authority.
    settings = signer(
        signer_files, timestamp_url=url, timestamp_timeout_s=TSA_WAIT_S, timestamp_retry_after_s=0
    )
    signer_ = ContentCredentials(settings)
    signed: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: signed.append(timed_sign(signer_, png_bytes())[0])) for _ in range(2)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.monotonic() - started < 1.7 * TSA_WAIT_S  # one after the other: 2 waits
    assert len(signed) == 2
    assert all(credentials_of(data, "image/png", signer_files)[0] == "Trusted" for data in signed)


@pytest.mark.parametrize(
    "text",
    [
        "error sending request for url (http://127.0.0.1:9/)",
        "tsa https://user:secret@tsa.example.com/path?key=abc failed",
        "'http://h/x' refused",
    ],
)
def test_errors_are_told_without_urls(text):
    cleaned = credentials.sanitised(RuntimeError(text))
    assert (
        "<url>" in cleaned and "://" not in cleaned and "secret" not in cleaned and "127.0.0.1" not in cleaned
    )
