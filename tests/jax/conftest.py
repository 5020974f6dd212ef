"""tests/jax: Keras's JAX backend (see tests/conftest.py)."""

import os

# The tests' models are small: fuse every variable, whatever its size, so that
# they check the custom call (test_size_threshold checks the default routing).
os.environ["FUSEDOPT_JAX_MIN_FUSED_SIZE"] = "0"
