"""A track's tags (title: the prompt, comment: the request as JSON, software), bounded to what each
container keeps, so that none is lost or garbled:

- WAV (libsndfile's LIST INFO chunk): libsndfile drops a string of WAV_TAG_BYTES or more bytes, and
  every tag after it. The title is cut to fit, ending in "…"; the comment keeps the whole JSON when it
  fits, else a shorter one that is still JSON: its longest strings (the prompt) cut, ending in "…",
  and `"truncated": true`.
- FLAC and OGG (Vorbis comments): kept whole (a prompt's limit is far below theirs).
- MP3: libsndfile hands LAME the UTF-8 bytes as ID3's Latin-1 (so "café" reads back as "cafÃ©" in
  every ID3 reader) and LAME writes its own name as the software. The ID3v2.3 tag is written here
  instead, with mutagen, in UTF-16: title (TIT2), comment (COMM) and software (TSSE)."""

import io
import json
from typing import Any

from mutagen.id3 import COMM, ID3, TIT2, TSSE, ID3NoHeaderError

from leap_ray.api.marks import SOFTWARE, OutputMarks

# libsndfile 1.2 keeps a WAV string of at most 2045 bytes (measured); below it, with room to spare.
WAV_TAG_BYTES = 2040
ELLIPSIS = "…"


def fitted_text(text: str, max_bytes: int | None) -> str:
    """`text`, or its start ending in "…", within `max_bytes` of UTF-8 (None: no limit)."""
    if max_bytes is None or len(text.encode()) <= max_bytes:
        return text
    room = max_bytes - len(ELLIPSIS.encode())
    return text.encode()[:room].decode(errors="ignore") + ELLIPSIS


def fitted_record(record: dict[str, Any], max_bytes: int | None) -> str:
    """The record as compact JSON within `max_bytes` of UTF-8: whole when it fits, else with every
    string cut to the longest length that fits (and `"truncated": true`), else the model alone."""
    whole = _json(record)
    if max_bytes is None or len(whole.encode()) <= max_bytes:
        return whole
    low, high = 0, max(len(whole), 1)  # the longest string length that fits, searched
    while low < high:
        middle = (low + high + 1) // 2
        if len(_json(_cut(record, middle) | {"truncated": True}).encode()) <= max_bytes:
            low = middle
        else:
            high = middle - 1
    shortened = _json(_cut(record, low) | {"truncated": True})
    if len(shortened.encode()) <= max_bytes:
        return shortened
    return _json({"model": fitted_text(str(record.get("model")), max_bytes // 2), "truncated": True})


def _cut(value: Any, length: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= length else value[: max(length - 1, 0)] + ELLIPSIS
    if isinstance(value, dict):
        return {key: _cut(item, length) for key, item in value.items()}
    if isinstance(value, list):
        return [_cut(item, length) for item in value]
    return value


def _json(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def libsndfile_tags(marks: OutputMarks, audio_format: str) -> dict[str, str]:
    """The tags libsndfile writes for a WAV, FLAC or OGG track, each within the container's limit,
    in the order they are set (a WAV drops the tags after one too long)."""
    limit = WAV_TAG_BYTES if audio_format == "wav" else None
    tags = {
        "title": fitted_text(marks.title, limit),
        "software": SOFTWARE,
        "comment": fitted_record(marks.record, limit),
    }
    return {name: text for name, text in tags.items() if text}  # libsndfile refuses an empty string


def with_id3_tags(mp3: bytes, marks: OutputMarks) -> bytes:
    """The MP3 with its ID3v2.3 tag replaced by the track's (UTF-16 text) and no ID3v1 tag (Latin-1,
    30 bytes a field: it could only garble the prompt)."""
    buffer = io.BytesIO(mp3)
    try:
        tags = ID3(buffer)
    except ID3NoHeaderError:
        tags = ID3()
    tags.delall("TSSE")
    tags.delall("TIT2")
    tags.delall("COMM")
    if marks.title:
        tags.add(TIT2(encoding=1, text=marks.title))
    tags.add(COMM(encoding=1, lang="eng", desc="", text=_json(marks.record)))
    tags.add(TSSE(encoding=1, text=SOFTWARE))
    buffer.seek(0)
    tags.save(buffer, v1=0, v2_version=3)
    return buffer.getvalue()
