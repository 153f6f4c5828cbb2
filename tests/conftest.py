"""Test set-up, before jax is imported: 8 CPU devices for mesh tests, and a persistent
compilation cache shared by the test workers (and notebook kernels), since many tests
compile the same small train steps."""

import fcntl
import os
import pathlib
import shutil
import tempfile

# The suite is compile-bound: LLVM's expensive passes cost ~25% of each compile (a small
# VQGAN's train step: 16.4 -> 11.8 s) and nothing measurable in the tests' executions;
# LLVM at -O1 (XLA's default is -O2) cut a cold VQGAN runlocal test 62 -> 52 s and the
# 150-step quantizer study 75 -> 59 s (-O0 made the study ~3x slower).
COMPILE_FLAGS = "--xla_llvm_disable_expensive_passes=true --xla_backend_optimization_level=1"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8 " + COMPILE_FLAGS).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "vqlab-tests-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
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



def _builds_key() -> str:
  """A digest of what the built fixtures depend on: the package, the configs, the
  fixtures' own code and the jax / flax versions."""
  import hashlib
  import flax
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  digest = hashlib.sha256(f"{jax.__version__} {flax.__version__}".encode())
  for top in ("vqlab", "configs", "tests"):
    for folder, dirs, files in sorted(os.walk(os.path.join(repo, top))):
      dirs.sort()
      for name in sorted(files):
        if name.endswith(".py") and (top != "tests" or name == "conftest.py"):
          path = os.path.join(folder, name)
          digest.update(os.path.relpath(path, repo).encode())
          digest.update(open(path, "rb").read())
  return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def build_once():
  """`build_once(name, build)` runs `build(directory)` once and returns the directory:
  read-only runs the tests share (chain tokenizers, the speech codec). They are kept in
  VQLAB_CACHE under a digest of the code they come from (_builds_key), so the xdist
  workers and CI's two pytest steps build each once (the first builds under a file lock,
  the others wait and reuse it); builds of other code are removed."""
  cache = os.environ["VQLAB_CACHE"]
  os.makedirs(cache, exist_ok=True)
  root = os.path.join(cache, "builds-" + _builds_key())
  with open(os.path.join(cache, "builds.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.isdir(root):
      for old in os.listdir(cache):
        if old.startswith("builds-"):
          shutil.rmtree(os.path.join(cache, old), ignore_errors=True)
      os.makedirs(root)
  root = pathlib.Path(root)

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
def session_dir(tmp_path_factory):
  """A directory of this test session, common to its xdist workers."""
  root = tmp_path_factory.getbasetemp()
  return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


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
