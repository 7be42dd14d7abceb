"""Hypothesis settings: 500 examples per property, no deadline (CI machines are slow and shared).

Without a GPU, Triton's kernels (``sigua_optim._kernels``) run in Triton's interpreter, on the CPU:
the variable must be set before the kernels are defined, that is before ``sigua_optim`` is imported.
"""

import os

import torch
from hypothesis import HealthCheck, settings

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

settings.register_profile(
    "sigua", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("sigua")
