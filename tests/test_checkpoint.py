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


def test_flipped_bytes_fail_the_checksum_and_the_previous_checkpoint_is_restored(tmp_path,
                                                                                 capsys):
  directory = tmp_path / "c"
  ckpt = Checkpointer(str(directory))
  weights = jax.random.normal(jax.random.key(0), (4096,))
  for step in (2, 4):
    ckpt.save(step, {"w": weights + step})
  ckpt.close()
  # 64 bytes in the middle of the largest data file: still decodes, to other numbers
  data = max((p for p in (directory / "4" / "state").rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)
  raw = bytearray(data.read_bytes())
  mid = len(raw) // 2
  raw[mid:mid + 64] = bytes(b ^ 0x5A for b in raw[mid:mid + 64])
  data.write_bytes(bytes(raw))
  step, state, _ = Checkpointer(str(directory)).restore({"w": jnp.zeros((4096,))})
  assert step == 2
  np.testing.assert_array_equal(state["w"], weights + 2)
  assert "checkpoint 4" in capsys.readouterr().err
  assert len(list((tmp_path / "c-unreadable").iterdir())) == 1


def test_a_checkpoint_of_another_tree_is_refused_and_left_in_place(tmp_path):
  from vqlab.checkpoint import CheckpointMismatch
  ckpt = Checkpointer(str(tmp_path / "c"))
  ckpt.save(1, {"model": {"w": jnp.zeros(3)}})
  ckpt.close()
  ckpt = Checkpointer(str(tmp_path / "c"))
  with pytest.raises(CheckpointMismatch, match=r"not in the checkpoint \(1\): ema/w"):
    ckpt.restore({"model": {"w": jnp.zeros(3)}, "ema": {"w": jnp.zeros(3)}})
  with pytest.raises(CheckpointMismatch, match=r"changed \(1\): model/w \(3,\) float32 -> \(4,\)"):
    ckpt.restore({"model": {"w": jnp.zeros(4)}})
  assert ckpt.all_steps() == [1] and not (tmp_path / "c-unreadable").exists()
  with pytest.raises(FileNotFoundError, match=r"expected one of the checkpoints \[1\]"):
    ckpt.restore({"model": {"w": jnp.zeros(3)}}, step=5)


@pytest.fixture
def small_disk(tmp_path):
  """A 3 MiB filesystem (tmpfs; needs root, skipped elsewhere)."""
  import subprocess
  mount = tmp_path / "disk"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(mount)],
                    capture_output=True).returncode:
    pytest.skip("cannot mount a small tmpfs here (not root?)")
  yield mount
  subprocess.run(["umount", "-l", str(mount)])


def test_a_full_disk_is_one_message_and_the_previous_checkpoint_stays(small_disk):
  from vqlab.checkpoint import DiskFull
  ckpt = Checkpointer(str(small_disk / "c"))
  weights = jax.random.normal(jax.random.key(0), (400_000,))  # 1.6 MB: one fits, two not
  ckpt.save(1, {"w": weights})
  ckpt.wait()
  with pytest.raises(DiskFull, match=r"disk full: .* MiB free .* checkpoint 2 was not written, "
                     r"the previous ones \(\[1\]\) are intact"):
    ckpt.save(2, {"w": weights + 1})
  # the space check passed, the disk filled up while writing (another job's files)
  ckpt.check_space = lambda *args, **kwargs: None
  (small_disk / "filler").write_bytes(b"\0" * 2**20)
  with pytest.raises(DiskFull, match="checkpoint 2 was not written"):
    ckpt.save(2, {"w": weights + 1})
    ckpt.wait()
  ckpt.close()
  assert any(".orbax-checkpoint-tmp" in p.name for p in (small_disk / "c").iterdir())
  ckpt = Checkpointer(str(small_disk / "c"))  # the next start: the partial save is removed
  assert sorted(p.name for p in (small_disk / "c").iterdir()) == ["1"]
  step, state, _ = ckpt.restore({"w": jnp.zeros(400_000)})
  assert step == 1
  np.testing.assert_array_equal(state["w"], weights)
