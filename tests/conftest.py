"""Test set-up: 8 CPU devices for mesh tests; set before jax is imported."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
  return np.random.default_rng(0)


def data_mesh():
  """An 8-device mesh with one `data` axis."""
  return jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
