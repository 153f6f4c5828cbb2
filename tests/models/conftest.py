"""Fixtures of the model tests."""

import jax
import numpy as np
import pytest
from flax import nnx


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
