"""Test set-up, before jax is imported: 8 CPU devices for mesh tests, and a persistent
compilation cache shared by the test workers (and notebook kernels), since many tests
compile the same small train steps."""

import fcntl
import os
import shutil
import tempfile

# The suite is compile-bound: LLVM's expensive passes cost ~25% of each compile (a small
# VQGAN's train step: 16.4 -> 11.8 s) and nothing measurable in the tests' executions.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8"
                           + " --xla_llvm_disable_expensive_passes=true").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "vqlab-tests-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# the digits sample-metric classifier: trained once (about a minute), shared like the above
os.environ.setdefault("VQLAB_CACHE", os.path.join(tempfile.gettempdir(), "vqlab-tests-cache"))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402


@pytest.fixture
def rng():
  return np.random.default_rng(0)


def data_mesh():
  """An 8-device mesh with one `data` axis."""
  return jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))



@pytest.fixture(scope="session")
def build_once(tmp_path_factory):
  """`build_once(name, build)` runs `build(directory)` once per test session, shared by
  the xdist workers (the first builds under a file lock, the others wait and reuse it),
  and returns the directory."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the session's directory, common to all workers

  def run(name: str, build):
    path = root / name
    with open(root / f"{name}.lock", "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      if not (path / "DONE").exists():
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
        build(path)
        (path / "DONE").touch()
    return path

  return run


@pytest.fixture(scope="session")
def speech_data_dir():
  """A tfds data dir with the built-in speech prepared (espeak-ng + recordings), kept in
  VQLAB_CACHE like the compilation cache: CI's two pytest steps and the workers build it
  once (tfds rebuilds on a new dataset version; the first worker builds under a lock)."""
  from vqlab.data import builtin
  root = os.path.join(os.environ["VQLAB_CACHE"], "speech_tfds")
  os.makedirs(root, exist_ok=True)
  with open(root + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    builtin.load("vqlab_speech", root, "test")
  return root


def _check_remat(build, loss, ratios=(1.5, 2.0), atol=1e-6):
  """`build(remat)` -> modules, `loss(modules)` -> scalar: the residuals the forward pass
  keeps for the backward (the leaves of the VJP closure) shrink by `ratios` from "none"
  to "block" to "full", and the gradients do not change. Returns the residual bytes."""
  kept, grads = {}, {}
  for remat in ("none", "block", "full"):
    graphdef, params, rest = nnx.split(build(remat), nnx.Param, ...)
    f = lambda p: loss(nnx.merge(graphdef, p, rest))
    # one program each (eager, every op of a tokenizer compiles on its own)
    vjp = jax.jit(lambda p: jax.vjp(f, p)[1])(params)
    kept[remat] = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(vjp))
    grads[remat] = jax.jit(jax.grad(f))(params)
  assert kept["none"] > ratios[0] * kept["block"] > ratios[1] * kept["full"], kept
  for remat in ("block", "full"):
    for a, b in zip(jax.tree.leaves(grads[remat]), jax.tree.leaves(grads["none"])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol)
  return kept


@pytest.fixture
def remat_shrinks_residuals():
  """`remat_shrinks_residuals(build, loss, ratios=(1.5, 2.0), atol=1e-6)`: see _check_remat."""
  return _check_remat
