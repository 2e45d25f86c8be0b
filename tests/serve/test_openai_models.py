"""OpenAI's Models API (in-process: the ingress's app, a stub model side): the official `openai`
client lists and retrieves the models this service serves, by the names its requests take; an unknown
name is a 404 naming `model`; the key is asked for as on every other route; and the one-segment
`/v1/models/{model}` leaves Replicate's `/v1/models/{owner}/{name}/...` paths alone."""

import time

import httpx
import openai
import pytest

from leap_ray.serve.gateway import SERVICES
from tests.helpers import APP_URL, assert_error, in_process_app

KEY = "models-key-0123456789"


def openai_client(in_process, api_key: str = "not-checked-without-keys") -> openai.OpenAI:
    http = httpx.Client(transport=in_process.transport)
    return openai.OpenAI(base_url=f"{APP_URL}/v1", api_key=api_key, max_retries=0, http_client=http)


def test_models_list_names_every_service_as_requests_name_it(in_process):
    before = int(time.time())
    listed = openai_client(in_process).models.list()
    assert [model.id for model in listed.data] == ["sdxl", "musicgen"] == list(SERVICES)
    for model in listed.data:
        assert (model.object, model.owned_by) == ("model", "leap_ray")
        assert before - 3600 < model.created <= int(time.time())
    raw = in_process.http.get("/v1/models").json()
    assert set(raw) == {"object", "data", "results", "next", "previous"} and raw["object"] == "list"
    assert all(set(entry) == {"id", "object", "created", "owned_by"} for entry in raw["data"])


@pytest.mark.parametrize("name", ["sdxl", "musicgen"])
def test_models_retrieve_answers_the_listed_model(name, in_process):
    client = openai_client(in_process)
    (listed,) = [model for model in client.models.list().data if model.id == name]
    assert client.models.retrieve(name) == listed


def test_a_listed_id_is_one_the_images_api_takes_back(in_process):
    client = openai_client(in_process)
    client.images.generate(model=client.models.retrieve("sdxl").id, prompt="a", size="64x64")
    assert in_process.gateway.generated[-1].width == 64


def test_an_unknown_model_is_404_naming_model(in_process):
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client(in_process).models.retrieve("dall-e-3")
    assert caught.value.status_code == 404
    error = assert_error(in_process.http.get("/v1/models/dall-e-3"), 404, "model")
    assert error["message"] == "no model 'dall-e-3'; this service serves sdxl, musicgen"
    assert error["type"] == "not_found_error"


def test_a_two_segment_model_path_is_not_the_openai_route(in_process):
    # Replicate's clients own /v1/models/{owner}/{name}: whatever answers there, it is not a model
    # object of OpenAI's.
    answer = in_process.http.get("/v1/models/leap-ray/sdxl")
    assert answer.json().get("object") != "model"
    assert in_process.http.get("/v1/models/sdxl").json()["object"] == "model"


def test_the_models_routes_ask_for_the_key_as_the_others_do(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{KEY}\n")
    with in_process_app(tmp_path, api_keys_file=str(keys)) as app:
        assert_error(app.http.get("/v1/models"), 401)
        assert_error(app.http.get("/v1/models/sdxl"), 401)
        with pytest.raises(openai.AuthenticationError):
            openai_client(app, api_key="wrong").models.list()
        assert [model.id for model in openai_client(app, api_key=KEY).models.list()] == ["sdxl", "musicgen"]


def test_the_models_routes_are_documented_under_their_own_tag(in_process):
    paths = in_process.http.get("/openapi.json").json()["paths"]
    assert paths["/v1/models"]["get"]["tags"] == ["OpenAI Models API"]
    retrieve = paths["/v1/models/{model}"]["get"]
    assert retrieve["operationId"] == "openai_retrieve_model" and "404" in retrieve["responses"]
