"""Strict JAX settings for the whole suite, so mistakes surface here, not in users' runs."""

import jax

# Several CPU devices, so multi-device code is tested on a machine without GPUs.
jax.config.update("jax_num_cpu_devices", 8)
# Implicit broadcasting between arrays of different ranks is an error.
jax.config.update("jax_numpy_rank_promotion", "raise")
