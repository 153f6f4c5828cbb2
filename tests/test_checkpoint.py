"""Save -> restore -> the next steps are bit-identical (model, optimizer, quantizer
statistics, RNG keys and the grain iterator all come back)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import quantizer_study as study_config
from vqlab.checkpoint import Checkpointer
from vqlab.data.digits import load_mnist_digits
from vqlab.data.pipeline import image_dataset
from vqlab.train import quantizer_study

_train_step = nnx.jit(quantizer_study.train_step_fn)


def _setup(seed):
  config = study_config.get_config("runlocal")
  # EMA codebook + k-means + restarts + Gumbel noise: every kind of state is in play.
  config.q.vq_ema_restart.args.estimator = "gumbel"
  model = quantizer_study.build_model(config, "vq_ema_restart", seed)
  optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  images, _ = load_mnist_digits()
  source = [{"image": x} for x in images[:256]]
  data = image_dataset(source, batch_size=8, image_size=32, seed=1, flip=True)
  return model, optimizer, iter(data.to_iter_dataset())


def _steps(model, optimizer, it, n):
  return [float(_train_step(model, optimizer, jnp.asarray(next(it)["image"]))["loss"])
          for _ in range(n)]


def test_restored_run_continues_bit_identically(tmp_path):
  model, optimizer, it = _setup(0)
  _steps(model, optimizer, it, 3)
  ckpt = Checkpointer(str(tmp_path / "ckpt"), max_to_keep=2)
  ckpt.save(3, nnx.to_pure_dict(nnx.state((model, optimizer))), it.get_state())
  ckpt.wait()
  want = _steps(model, optimizer, it, 3)
  want_params = nnx.to_pure_dict(nnx.state(model, nnx.Param))

  fresh_model, fresh_opt, fresh_it = _setup(123)  # different init, iterator at the start
  state = nnx.state((fresh_model, fresh_opt))
  step, restored, data_state = Checkpointer(str(tmp_path / "ckpt")).restore(
      nnx.to_pure_dict(state))
  assert step == 3
  nnx.replace_by_pure_dict(state, restored)
  nnx.update((fresh_model, fresh_opt), state)
  fresh_it.set_state(data_state)
  got = _steps(fresh_model, fresh_opt, fresh_it, 3)
  assert got == want  # bit for bit on the same machine
  got_params = nnx.to_pure_dict(nnx.state(fresh_model, nnx.Param))
  for a, b in zip(jax.tree.leaves(got_params), jax.tree.leaves(want_params)):
    np.testing.assert_array_equal(a, b)


def test_keeps_the_newest_and_reports_a_missing_checkpoint(tmp_path):
  ckpt = Checkpointer(str(tmp_path / "c"), max_to_keep=2)
  tree = {"w": jnp.arange(3.0), "key": jax.random.key(0)}
  for step in (1, 2, 3):
    ckpt.save(step, jax.tree.map(lambda x: x, tree))
  ckpt.wait()
  assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3
  step, state, data = ckpt.restore(tree)
  assert step == 3 and data is None
  np.testing.assert_array_equal(jax.random.key_data(state["key"]),
                                jax.random.key_data(tree["key"]))
  with pytest.raises(FileNotFoundError, match="directory"):
    Checkpointer(str(tmp_path / "empty")).restore(tree)


@pytest.mark.parametrize("damage", ["garbage", "missing"])
def test_unreadable_latest_checkpoint_falls_back_to_the_previous(damage, tmp_path, capsys):
  directory = tmp_path / "c"
  ckpt = Checkpointer(str(directory))
  for step in (2, 4):
    ckpt.save(step, {"w": jnp.full((64,), float(step))}, {"next": step})
  ckpt.close()
  files = [p for p in (directory / "4" / "state").rglob("*") if p.is_file()]
  assert files
  for p in files:
    if damage == "garbage":
      p.write_bytes(b"\x00not a checkpoint")
    else:
      p.unlink()
  ckpt = Checkpointer(str(directory))
  step, state, data = ckpt.restore({"w": jnp.zeros((64,))})
  assert step == 2 and data == {"next": 2}
  np.testing.assert_array_equal(state["w"], np.full((64,), 2.0))
  assert "checkpoint 4" in capsys.readouterr().err
  assert ckpt.all_steps() == [2]  # set aside: step 4 can be saved again
  assert len(list((tmp_path / "c-unreadable").iterdir())) == 1
  ckpt.save(4, {"w": jnp.full((64,), 5.0)})
  ckpt.wait()
  assert ckpt.restore({"w": jnp.zeros((64,))})[0] == 4
  for p in (directory / "2" / "state").rglob("*"):
    if p.is_file():
      p.unlink()
  for p in (directory / "4" / "state").rglob("*"):
    if p.is_file():
      p.unlink()
  with pytest.raises(RuntimeError, match="no readable checkpoint"):
    Checkpointer(str(directory)).restore({"w": jnp.zeros((64,))})
