"""Optional bearer API keys, from a file the config names and a file LEAP_RAY_API_KEYS_FILE names."""

from pathlib import Path

import httpx
import pytest
import ray

CONFIG_KEY = "config-key-0123456789"
FILE_KEY = "file-key-9876543210"
ADMIN_KEY = "admin-key-5555555555"
BODY = {"prompt": "a", "height": 64, "width": 64, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def secured(variants, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("keys")
    (folder / "config-keys.txt").write_text(f"{CONFIG_KEY}\n")
    (folder / "env-keys.txt").write_text(f"\n{FILE_KEY}\n")
    (folder / "admin-keys.txt").write_text(f"{ADMIN_KEY}\n")
    variants.deploy_with(
        variants.variant(
            "secured",
            env={"LEAP_RAY_API_KEYS_FILE": str(folder / "env-keys.txt")},
            ingress={
                "api_keys_file": str(folder / "config-keys.txt"),
                "admin_api_keys_file": str(folder / "admin-keys.txt"),
            },
        )
    )
    return f"{variants.url}/secured"


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong-key",
        "",
        "Bearer",
        f"Basic {CONFIG_KEY}",
        CONFIG_KEY,
        f"Bearer {CONFIG_KEY}x",
    ],
    ids=["missing", "wrong", "empty", "scheme-only", "basic-scheme", "no-scheme", "key-prefix"],
)
def test_requests_without_a_valid_key_get_401(secured, authorization):
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = httpx.post(f"{secured}/v1/sdxl", json=BODY, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("key", [CONFIG_KEY, FILE_KEY], ids=["file-in-config", "file-in-environment"])
def test_a_valid_key_is_let_in(secured, key):
    response = httpx.post(
        f"{secured}/v1/sdxl", json=BODY, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )
    assert response.status_code == 200


def test_health_checks_stay_open(secured):
    assert httpx.get(f"{secured}/healthz").status_code == 200
    assert httpx.get(f"{secured}/readyz").status_code == 200


def test_keys_are_never_logged(secured):
    httpx.post(f"{secured}/v1/sdxl", json=BODY, headers={"Authorization": "Bearer not-the-key"})
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    logs = [path for path in (session / "logs").rglob("*") if path.is_file()]
    assert logs
    for path in logs:
        text = path.read_text(errors="ignore")
        assert CONFIG_KEY not in text and FILE_KEY not in text, path


def as_key(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_job_is_seen_only_with_the_key_that_made_it_and_with_an_admin_key(secured):
    job = httpx.post(
        f"{secured}/v1/jobs", json={"service": "sdxl", "input": BODY}, headers=as_key(CONFIG_KEY)
    )
    assert job.status_code == 202
    url = f"{secured}/v1/jobs/{job.json()['id']}"
    owner, stranger, admin = as_key(CONFIG_KEY), as_key(FILE_KEY), as_key(ADMIN_KEY)
    assert httpx.get(url, headers=owner).status_code == 200
    assert httpx.get(url, headers=admin).status_code == 200
    for method, path in [("GET", ""), ("GET", "/outputs/0"), ("DELETE", "")]:
        refused = httpx.request(method, url + path, headers=stranger)
        assert (refused.status_code, refused.json()["error"]["param"]) == (404, "job_id")
    listed = {
        key: [j["id"] for j in httpx.get(f"{secured}/v1/jobs", headers=as_key(key)).json()]
        for key in (CONFIG_KEY, FILE_KEY, ADMIN_KEY)
    }
    assert job.json()["id"] in listed[CONFIG_KEY] and job.json()["id"] in listed[ADMIN_KEY]
    assert job.json()["id"] not in listed[FILE_KEY]
    prediction = f"{secured}/v1/predictions/{job.json()['id']}"
    assert httpx.get(prediction, headers=stranger).status_code == 404
    assert httpx.get(prediction, headers=owner).status_code == 200
