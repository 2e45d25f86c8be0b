"""Uploaded files (POST /v1/files) in the output store: found again by their id alone, another key's
read as missing, gone at their expiry, and the hours whose files have all expired deleted by the
next upload, in a folder and in an object store (moto's S3 server). Only a URL whose path ends in an
id of ours names a file."""

import io
import uuid
from pathlib import Path

import obstore
import pytest
from obstore.store import S3Store
from PIL import Image

from leap_ray.api.files import FileUpload
from leap_ray.errors import InvalidRequest, NotFound
from leap_ray.serve.jobs.files import HOUR_S, UploadedFiles, file_id_in_url
from leap_ray.serve.jobs.outputs import FolderOutputs, ObjectOutputs, OutputStore
from tests.helpers import BUCKET, CREDENTIALS

DAY_S = 24 * 3600.0


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="PNG")
    return buffer.getvalue()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def upload(files: UploadedFiles, client: str = "key-a") -> str:
    return files.create(FileUpload(content=png()), "red.png", client).id


def folder_files(tmp_path: Path, clock: Clock) -> UploadedFiles:
    return UploadedFiles(FolderOutputs(tmp_path), DAY_S, clock)


def test_a_file_is_its_keys_until_it_expires(tmp_path):
    clock = Clock(1_000 * HOUR_S)
    files = folder_files(tmp_path, clock)
    file_id = upload(files)
    assert files.get(file_id, "key-a").name == "red.png" and files.get(file_id, None).id == file_id
    assert files.data_uri(file_id, "key-a").startswith("data:image/png;base64,iVBORw0KGgo")
    with pytest.raises(NotFound):
        files.get(file_id, "key-b")
    clock.now += DAY_S
    with pytest.raises(NotFound):
        files.get(file_id, "key-a")


def test_the_next_upload_deletes_the_hours_whose_files_all_expired(tmp_path):
    clock = Clock(1_000 * HOUR_S + 10)
    files = folder_files(tmp_path, clock)
    old = upload(files)
    clock.now += DAY_S + HOUR_S - 20  # the old hour's last file may live until its end + a day
    upload(files)
    assert (tmp_path / "files" / old.partition("-")[0]).exists()
    clock.now += 20
    new = upload(files)
    assert not (tmp_path / "files" / old.partition("-")[0]).exists()
    assert files.get(new, "key-a").id == new


def test_a_fresh_replica_sweeps_what_an_earlier_one_left(tmp_path):
    clock = Clock(1_000 * HOUR_S)
    old = upload(folder_files(tmp_path, clock))
    clock.now += 2 * DAY_S
    upload(folder_files(tmp_path, clock))
    assert not (tmp_path / "files" / old.partition("-")[0]).exists()


@pytest.mark.parametrize(
    ("url", "ours"),
    [
        ("https://HOST:8000/v1/files/3e8-" + "a" * 32, True),
        ("http://10.0.0.1/prefix/v1/files/3e8-" + "a" * 32 + "?x=1", True),
        ("https://api.replicate.com/v1/files/MTQzODk4NzQ", False),
        ("https://HOST/v1/files/3e8-" + "a" * 32 + "/../../secrets", False),
        ("https://HOST/v1/files/3e8-" + "A" * 32, False),
        ("http://[::1/v1/files/3e8-" + "a" * 32, False),
    ],
    ids=["ours", "ours behind a prefix", "Replicate's", "a path past the id", "not our id", "no URL"],
)
def test_only_a_url_ending_in_an_id_of_ours_names_a_file(url, ours):
    assert (file_id_in_url(url) is not None) == ours


def test_a_url_of_a_missing_file_is_a_422_naming_the_field(tmp_path):
    files = folder_files(tmp_path, Clock(1_000 * HOUR_S))
    url = "https://HOST/v1/files/3e8-" + "a" * 32
    with pytest.raises(InvalidRequest) as raised:
        files.with_files({"image": url, "prompt": url}, ("image",), "key-a", "input")
    assert raised.value.param == "input.image" and raised.value.code == "file_not_found"
    assert files.with_files({"prompt": url}, ("image",), "key-a", "input") == {"prompt": url}


def test_files_in_an_object_store_are_found_and_swept(s3_endpoint, monkeypatch):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    prefix = uuid.uuid4().hex
    store: OutputStore = ObjectOutputs(f"s3://{BUCKET}/{prefix}", {"endpoint": s3_endpoint})
    clock = Clock(1_000 * HOUR_S)
    files = UploadedFiles(store, DAY_S, clock)
    old = upload(files)
    assert files.data_uri(old, "key-a").startswith("data:image/png;base64,")
    clock.now += 2 * DAY_S
    new = upload(files)
    bucket = S3Store(BUCKET, prefix=prefix, endpoint=s3_endpoint, client_options={"allow_http": True})
    keys = sorted(item["path"] for batch in obstore.list(bucket) for item in batch)
    assert keys == [
        f"files/{new.partition('-')[0]}/{new}/0.png",
        f"files/{new.partition('-')[0]}/{new}/meta/0.json",
    ]
