"""Hypothesis settings: 500 examples per property, no deadline (CI machines are slow and shared)."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "sigua", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("sigua")
