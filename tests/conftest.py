"""Shared pytest settings."""

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60
)
settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("default")


@pytest.fixture(scope="module")
def uml():
    """User-Mode Linux for the real-guest tests (fetched once, cached), or a skip saying why."""
    from real_guest_support import uml_or_skip

    return uml_or_skip()
