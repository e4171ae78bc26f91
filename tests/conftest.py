"""Strict JAX settings for the whole suite, so mistakes surface here, not in users' runs.

Hypothesis profiles (`HYPOTHESIS_PROFILE=name`): 'ci', the default, a small
derandomized budget, the same examples every run; 'long', many random
examples for a local hunt (about an hour for tests/layers/test_contract_fuzz.py),
failures saved in .hypothesis/ and replayed first.
"""

import os

import jax
from hypothesis import HealthCheck, settings

# Several CPU devices, so multi-device code is tested on a machine without GPUs.
jax.config.update("jax_num_cpu_devices", 8)
# Implicit broadcasting between arrays of different ranks is an error.
jax.config.update("jax_numpy_rank_promotion", "raise")

# Compiles dominate a contract check: no deadline, and slow data generation is not the problem.
_SLOW_IS_FINE = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=2,
    deadline=None,
    database=None,
    suppress_health_check=_SLOW_IS_FINE,
    print_blob=True,
)
settings.register_profile(
    "long", max_examples=40, deadline=None, suppress_health_check=_SLOW_IS_FINE, print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
