"""GET /v1/sdxl/defaults on the in-process app (stub model: the tiny model's facts): the model's size
and steps, documented in the schema, behind the API key like the other /v1 routes."""

from tests.helpers import assert_error, call, make_app


def test_the_defaults_are_the_models_own(tmp_path):
    app, _ = make_app(tmp_path)
    response = call(app, "GET", "/v1/sdxl/defaults")
    assert response.status_code == 200, response.text
    assert response.json() == {"height": 256, "width": 256, "num_inference_steps": 8}


def test_the_defaults_route_is_in_the_schema_with_its_fields_described(tmp_path):
    app, _ = make_app(tmp_path)
    spec = call(app, "GET", "/openapi.json").json()
    answer = spec["paths"]["/v1/sdxl/defaults"]["get"]["responses"]["200"]["content"]["application/json"]
    assert answer["schema"] == {"$ref": "#/components/schemas/SDXLDefaults"}
    fields = spec["components"]["schemas"]["SDXLDefaults"]["properties"]
    assert set(fields) == {"height", "width", "num_inference_steps"}
    assert all(field["description"] for field in fields.values())


def test_the_defaults_need_a_key_when_keys_are_on(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("sekret-key\n")
    app, _ = make_app(tmp_path, api_keys_file=str(keys))
    assert_error(call(app, "GET", "/v1/sdxl/defaults"), 401)
    response = call(app, "GET", "/v1/sdxl/defaults", headers={"Authorization": "Bearer sekret-key"})
    assert response.json()["height"] == 256
