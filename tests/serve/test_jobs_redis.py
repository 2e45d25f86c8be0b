"""The same job guarantees with the Redis store, against a real redis-server."""

import pytest

from .test_jobs import survives_a_killed_ingress

APP = "jobs-redis"


@pytest.fixture(scope="module")
def redis_jobs(variants, redis_url, tmp_path_factory) -> str:
    output_dir = str(tmp_path_factory.mktemp("redis-outputs"))
    settings = {"store": "redis", "redis_url": redis_url, "output_dir": output_dir, "stale_after_s": 3}
    variants.deploy_with(variants.variant(APP, ingress={"jobs": settings}))
    return f"{variants.url}/{APP}"


def test_jobs_outlive_a_killed_ingress_replica_with_redis(redis_jobs):
    survives_a_killed_ingress(redis_jobs, APP)
