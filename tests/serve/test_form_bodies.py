"""multipart/form-data bodies (OpenAI's image edits): fields, files and bracketed nested fields as
clients write them, each name once, the parts bounded."""

import pytest
from pydantic import BaseModel, ConfigDict

from leap_ray.errors import InvalidRequest, PayloadTooLarge
from leap_ray.serve.bodies import MAX_FORM_PARTS, parse_form_body


class Anything(BaseModel):
    model_config = ConfigDict(extra="allow")


def form(*parts: tuple[str, bytes, str | None]) -> tuple[bytes, str]:
    body = b""
    for name, value, filename in parts:
        file = f'; filename="{filename}"\r\nContent-Type: image/png' if filename else ""
        body += (
            f'--b\r\nContent-Disposition: form-data; name="{name}"{file}\r\n\r\n'.encode() + value + b"\r\n"
        )
    return body + b"--b--\r\n", "multipart/form-data; boundary=b"


def parsed(*parts: tuple[str, bytes, str | None]) -> dict:
    return parse_form_body(*form(*parts), Anything).model_extra


@pytest.mark.parametrize(
    "order",
    [
        [("l[][name]", b"ink"), ("l[][name]", b"paper"), ("l[][scale]", b"0.7"), ("l[][scale]", b"2")],
        [("l[][name]", b"ink"), ("l[][scale]", b"0.7"), ("l[][name]", b"paper"), ("l[][scale]", b"2")],
    ],
    ids=["grouped-by-key-as-openai-sends", "item-by-item"],
)
def test_lists_of_objects_are_read_whether_grouped_by_key_or_by_item(order):
    fields = parsed(*((name, value, None) for name, value in order))
    assert fields["l"] == [{"name": "ink", "scale": "0.7"}, {"name": "paper", "scale": "2"}]


def test_objects_lists_and_files_by_their_bracketed_names():
    fields = parsed(
        ("refiner[enabled]", b"true", None),
        ("size[]", b"1", None),
        ("size[]", b"2", None),
        ("image[]", b"PNG", "a.png"),
    )
    assert fields == {"refiner": {"enabled": "true"}, "size": ["1", "2"], "image": b"PNG"}


@pytest.mark.parametrize(
    ("parts", "param"),
    [
        ([("prompt", b"a", None), ("prompt", b"b", None)], "prompt"),
        ([("image", b"1", "a.png"), ("image[]", b"2", "b.png")], "image"),
        ([("refiner", b"1", None), ("refiner[x]", b"1", None)], "refiner"),
        ([("a[b", b"1", None)], "a[b"),
        ([("a[b][c][d][e]", b"1", None)], "a[b][c][d][e]"),
    ],
    ids=["a-field-twice", "a-file-twice", "value-and-object", "unclosed-bracket", "nested-too-deep"],
)
def test_ambiguous_or_malformed_names_are_422_naming_them(parts, param):
    with pytest.raises(InvalidRequest) as caught:
        parsed(*parts)
    assert caught.value.param == param


def test_more_parts_than_the_bound_are_413_even_under_one_name():
    with pytest.raises(PayloadTooLarge):
        parsed(*[("many[]", b"x", None)] * (MAX_FORM_PARTS + 1))
