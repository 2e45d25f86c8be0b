"""Request bodies are parsed and validated off the event loop: decoding a melody or a tensor, or
parsing an 11 MB body, costs a worker thread, never the loop that serves every other client.
Bodies no valid request could be are refused before the costly steps: too many JSON items before
parsing, unknown fields before validation."""

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from python_multipart.multipart import Field, File, FormParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from leap_ray.config import LIMITS
from leap_ray.errors import (
    InvalidRequest,
    LeapRayError,
    MalformedRequest,
    PayloadTooLarge,
    invalid_request_from,
)

Model = TypeVar("Model", bound=BaseModel)


def load_json(raw: bytes, max_items: int) -> Any:
    """The body's JSON. Every key needs a ':' and every further item a ',', so their count bounds the
    work of parsing; it is taken in C before any of it."""
    if raw.count(b":") + raw.count(b",") > max_items:
        raise PayloadTooLarge(f"the body holds more than {max_items} JSON items", code="too_many_items")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedRequest("the body is not valid UTF-8", code="invalid_utf8") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise MalformedRequest("the body's JSON is nested too deeply", code="json_too_deep") from None
    except ValueError as error:  # bad syntax, or an integer literal of thousands of digits
        raise MalformedRequest(f"the body is not valid JSON: {error}", code="json_invalid") from None


def validated(model: type[Model], data: Any, prefix: str = "") -> Model:
    """`data` as a `model`, or an InvalidRequest naming the field (`prefix` + its name)."""
    if isinstance(data, model):
        return data
    try:
        if isinstance(data, dict) and model.model_config.get("extra") != "allow":
            unknown = next((key for key in data if key not in model.model_fields), None)
            if unknown is not None:
                raise InvalidRequest(f"{unknown}: unknown field", param=str(unknown), code="extra_forbidden")
        return model.model_validate(data)
    except ValidationError as error:
        failure = invalid_request_from(error.errors())
    except InvalidRequest as error:
        failure = error
    if prefix and isinstance(failure, InvalidRequest):
        failure.param = f"{prefix}.{failure.param}" if failure.param else prefix
    raise failure


def parse_body(raw: bytes, model: type[Model]) -> Model:
    return validated(model, load_json(raw, LIMITS.max_json_items))


async def read_body(request: Request, model: type[Model]) -> Model:
    """The request's JSON body as a `model`, parsed and validated on a worker thread."""
    return await run_in_threadpool(parse_body, await request.body(), model)


async def validate_off_loop(model: type[Model], data: Any, prefix: str = "") -> Model:
    """`validated` on a worker thread (a handle's dict may hold a melody to decode)."""
    return await run_in_threadpool(validated, model, data, prefix)


MAX_FORM_PARTS = 64  # a multipart body's fields and files; a valid request has a few dozen at most
_FORM_KEY = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\]){0,3})")  # name, then up to 3 [key] or []


def _put(container: dict[str, Any], name: str, path: list[str], value: Any) -> None:
    """Puts a form field where its bracketed name says, as HTML forms and OpenAI's client write
    nested fields: `a[b]` a key of object a, `a[]` an item of list a, `a[][b]` key b of the first of
    list a's objects without one (OpenAI's client sends all the items' b, then all their c: when some
    items lack a key, which item a value belongs to is lost). Each plain name may come once."""
    if not path:
        if name in container:
            raise InvalidRequest(f"{name} may be given once", param=name, code="repeated_field")
        container[name] = value
        return
    key, rest = path[0], path[1:]
    kind = list if key == "" else dict
    inner = container.setdefault(name, kind())
    if not isinstance(inner, kind):
        raise InvalidRequest(f"{name} is given both as a value and as a list or object", param=name)
    if kind is dict:
        _put(inner, key, rest, value)
    elif not rest:
        inner.append(value)
    else:  # the n-th `a[][b]` is key b of item n, whether a client groups by item or by key
        item = next((item for item in inner if isinstance(item, dict) and rest[0] not in item), None)
        if item is None:
            inner.append(item := {})
        _put(item, rest[0], rest[1:], value)


def parse_form_body(
    raw: bytes, content_type: str, model: type[Model], file_names: dict[str, str] | None = None
) -> Model:
    """A multipart/form-data body (the guard lets no other type through) as a `model`: its fields as
    strings, nested ones by their bracketed names (`_put`), its files as bytes (a file's `name[]`
    read as `name`: the models take one image, one mask), and the names the client gave its files
    into `file_names`, by field. Files stay in memory (the body is bounded)."""
    data: dict[str, Any] = {}
    parts = 0

    def keep(name: bytes | None, value: Any, *, is_file: bool) -> None:
        nonlocal parts
        parts += 1
        if parts > MAX_FORM_PARTS:
            raise PayloadTooLarge(f"the form holds more than {MAX_FORM_PARTS} parts", code="too_many_parts")
        text = (name or b"").decode("utf-8", "replace")
        if is_file:
            _put(data, text.removesuffix("[]"), [], value)
        elif matched := _FORM_KEY.fullmatch(text):
            _put(data, matched[1], re.findall(r"\[([^\[\]]*)\]", matched[2]), value)
        else:
            raise InvalidRequest(
                f"{text!r} is not a field name this form takes", param=text, code="bad_field"
            )

    def on_field(field: Field) -> None:
        keep(field.field_name, (field.value or b"").decode("utf-8", "replace"), is_file=False)

    def on_file(file: File) -> None:
        file.file_object.seek(0)
        keep(file.field_name, file.file_object.read(), is_file=True)
        if file_names is not None:
            field = (file.field_name or b"").decode("utf-8", "replace").removesuffix("[]")
            file_names[field] = (file.file_name or b"").decode("utf-8", "replace")
        file.close()

    media_type, options = parse_options_header(content_type)
    in_memory = {"MAX_MEMORY_FILE_SIZE": len(raw) + 1}
    try:
        boundary = options.get(b"boundary")
        parser = FormParser(media_type.decode(), on_field, on_file, boundary=boundary, config=in_memory)
        parser.write(raw)
        parser.finalize()
    except LeapRayError:
        raise
    except Exception as error:
        raise MalformedRequest(f"the form could not be read: {error}", code="malformed_form") from None
    return validated(model, data)


async def read_form(request: Request, model: type[Model], file_names: dict[str, str] | None = None) -> Model:
    """The request's multipart/form-data body as a `model`, parsed and validated on a worker thread
    (`parse_form_body`)."""
    content_type = request.headers.get("content-type", "")
    return await run_in_threadpool(parse_form_body, await request.body(), content_type, model, file_names)
