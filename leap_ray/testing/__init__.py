"""Test support only: engines that misbehave on purpose (`leap_ray.testing.fakes`). Production code
never imports this package."""
