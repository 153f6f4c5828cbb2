"""SEANet encoder / decoder of the neural audio codecs (SoundStream, Zeghidour et al. 2021,
https://arxiv.org/abs/2107.03312; EnCodec, Defossez et al. 2022,
https://arxiv.org/abs/2210.13438), waveforms channels-last (B, T, C).

Encoder: conv k7 -> per stride s: residual units (dilations 1, 3, 9), activation, conv
with kernel 2s and stride s doubling the channels -> optional LSTM -> activation -> conv
k7 to the latent width. The decoder mirrors it with transposed convs.

Frame arithmetic (EnCodec's): a conv of effective kernel K and stride s is padded by
K - s in total, so a length that is a multiple of s maps to exactly length / s; a
transposed conv trims K - s, mapping n frames to exactly n s samples. Causal layers put
all padding on the left (trim on the right); non-causal layers split it.

Streaming: every layer has `apply(x, state)`. With `state=None` it processes a whole
signal; with a state (from `init_state`) it processes one chunk and returns the state
for the next. A causal conv's state is its last K - s inputs (zeros at the start, which
is exactly causal zero padding), a transposed conv's the K - s output samples that
overlap the next chunk, an LSTM's (h, c). Whole-signal processing of a causal model is
therefore one chunk from the initial state, and chunk after chunk gives the same output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vqlab.nn.transformer import check_remat, checkpointed, param

Array = jax.Array
ACTIVATIONS = ("elu", "snake")
DECODERS = ("seanet", "istft")


@dataclasses.dataclass(frozen=True)
class SEANetShape:
  channels: int = 32                     # width after the first conv; doubles per stride
  latent_dim: int = 128                  # encoder output = quantizer input
  strides: tuple[int, ...] = (2, 4, 5, 8)  # encoder order; hop = product
  dilations: tuple[int, ...] = (1, 3, 9)  # one residual unit per dilation
  residual_kernel: int = 7                # SoundStream 7, EnCodec 3
  kernel: int = 7                         # first and last convs
  activation: str = "elu"                 # "elu" (SoundStream / EnCodec) or "snake" (DAC)
  causal: bool = True                     # streaming-capable padding
  weight_norm: bool = True
  lstm_layers: int = 0                    # EnCodec: 2, after the encoder / before the decoder
  audio_channels: int = 1
  decoder: str = "seanet"                 # or "istft": a spectrogram and its inverse (Vocos)
  remat: str = "none"                     # training: "block" / "full" recompute each
                                          # residual unit in the backward (whole signals)

  def check(self) -> None:
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {self.activation!r}")
    if self.decoder not in DECODERS:
      raise ValueError(f"decoder: expected one of {DECODERS}, got {self.decoder!r}")
    for name in ("channels", "latent_dim", "residual_kernel", "kernel", "audio_channels"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
    if not self.strides or any(int(s) < 1 for s in self.strides):
      raise ValueError(f"strides: expected positive ints, got {self.strides}")
    if any(int(d) < 1 for d in self.dilations):
      raise ValueError(f"dilations: expected positive ints, got {self.dilations}")
    if self.lstm_layers < 0:
      raise ValueError(f"lstm_layers: expected >= 0, got {self.lstm_layers}")
    check_remat(self.remat)

  @property
  def hop(self) -> int:
    return int(np.prod(self.strides))


def _take_last(x: Array, n: int) -> Array:
  """The last n steps of x (B, T, C); n = 0 gives an empty (B, 0, C) (x[:, -0:] would not)."""
  return x[:, x.shape[1] - n:]


class Conv1d(nnx.Module):
  """Conv1d (or transposed) with optional weight norm (per output channel, as
  torch.nn.utils.weight_norm with dim=0) and causal / centred padding."""

  def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1, dilation: int = 1,
               causal: bool = True, weight_norm: bool = True, transpose: bool = False,
               rngs: nnx.Rngs):
    if transpose and dilation != 1:
      raise ValueError(f"dilation: transposed convs take 1, got {dilation}")
    self.cin, self.cout, self.kernel, self.stride, self.dilation = cin, cout, kernel, stride, dilation
    self.causal, self.transpose, self.weight_norm = causal, transpose, weight_norm
    self.span = (kernel - 1) * dilation + 1  # effective kernel
    self.overlap = self.span - stride       # padding (conv) or trimming (transposed)
    if self.overlap < 0:
      raise ValueError(f"kernel: expected a span >= stride={stride}, got kernel {kernel} "
                       f"(span {self.span})")
    bound = 1.0 / np.sqrt(cin * kernel)  # PyTorch's conv default
    v = jax.random.uniform(rngs.params(), (kernel, cin, cout), minval=-bound, maxval=bound)
    self.v = param(v, (None, "conv_in", "conv_out"))
    if weight_norm:
      self.g = param(jnp.sqrt(jnp.sum(jnp.square(v), axis=(0, 1))), ("conv_out",))
    self.bias = param(jax.random.uniform(rngs.params(), (cout,), minval=-bound, maxval=bound),
                      ("conv_out",))

  def weight(self) -> Array:
    v = self.v[...]
    if not self.weight_norm:
      return v
    return v * (self.g[...] / jnp.sqrt(jnp.sum(jnp.square(v), axis=(0, 1)) + 1e-12))

  def init_state(self, batch: int, dtype=jnp.float32) -> Array:
    return jnp.zeros((batch, self.overlap, self.cout if self.transpose else self.cin), dtype)

  def _conv(self, x: Array) -> Array:
    w = self.weight().astype(x.dtype)
    if self.transpose:  # flipped: output s i + j gets x_i w[j] (torch's ConvTranspose1d)
      return jax.lax.conv_transpose(x, w[::-1], (self.stride,), "VALID",
                                    dimension_numbers=("NWC", "WIO", "NWC"))
    return jax.lax.conv_general_dilated(x, w, (self.stride,), "VALID",
                                        rhs_dilation=(self.dilation,),
                                        dimension_numbers=("NWC", "WIO", "NWC"))

  def apply(self, x: Array, state: Array | None = None) -> tuple[Array, Array | None]:
    """x (B, T, cin) -> (y, next state). T must be a multiple of the stride (convs)."""
    if x.shape[-1] != self.cin:
      raise ValueError(f"x: expected {self.cin} channels, got shape {tuple(x.shape)}")
    bias = self.bias[...].astype(x.dtype)
    if state is None and not self.causal:
      right = self.overlap // 2
      if self.transpose:
        y = self._conv(x)
        return y[:, self.overlap - right:y.shape[1] - right] + bias, None
      x = jnp.pad(x, ((0, 0), (self.overlap - right, right), (0, 0)))
      return self._conv(x) + bias, None
    if state is not None and not self.causal:
      raise ValueError("state: streaming needs a causal model (causal=True)")
    whole = state is None
    if whole:
      state = self.init_state(x.shape[0], x.dtype)
    if self.transpose:
      y = self._conv(x)  # n s + overlap samples; the first `overlap` add to the carried tail
      n = x.shape[1] * self.stride
      y = y.at[:, :self.overlap].add(state.astype(y.dtype))
      return y[:, :n] + bias, (None if whole else y[:, n:])
    if x.shape[1] % self.stride:
      raise ValueError(f"x: expected a length that is a multiple of the stride "
                       f"{self.stride}, got {x.shape[1]}")
    xx = jnp.concatenate([state.astype(x.dtype), x], axis=1)
    return self._conv(xx) + bias, (None if whole else _take_last(xx, self.overlap))

  def __call__(self, x: Array) -> Array:
    return self.apply(x)[0]


class Snake(nnx.Module):
  """x + sin^2(a x) / a, a learned per channel (BigVGAN / DAC)."""

  def __init__(self, channels: int):
    self.alpha = param(jnp.ones((channels,)), ("conv_out",))

  def __call__(self, x: Array) -> Array:
    a = self.alpha[...].astype(x.dtype)
    return x + jnp.square(jnp.sin(a * x)) / (a + 1e-9)


class ELU(nnx.Module):
  def __call__(self, x: Array) -> Array:
    return jax.nn.elu(x)


def _activation(kind: str, channels: int) -> nnx.Module:
  return Snake(channels) if kind == "snake" else ELU()


class LSTM(nnx.Module):
  """Stacked LSTM with a skip connection around it (EnCodec's SLSTM)."""

  def __init__(self, dim: int, layers: int, rngs: nnx.Rngs):
    bound = 1.0 / np.sqrt(dim)
    init = lambda shape: jax.random.uniform(rngs.params(), shape, minval=-bound, maxval=bound)
    self.dim, self.layers = dim, layers
    self.w_in = param(init((layers, dim, 4 * dim)), (None, "embed", "mlp"))
    self.w_rec = param(init((layers, dim, 4 * dim)), (None, "embed", "mlp"))
    self.b = param(init((layers, 4 * dim)), (None, "mlp"))

  def init_state(self, batch: int, dtype=jnp.float32) -> Array:
    return jnp.zeros((self.layers, 2, batch, self.dim), dtype)  # (h, c) per layer

  def apply(self, x: Array, state: Array | None = None) -> tuple[Array, Array | None]:
    whole = state is None
    state = self.init_state(x.shape[0], jnp.float32) if whole else state
    h_seq, new = x.astype(jnp.float32), []
    for l in range(self.layers):
      w_in, w_rec, b = self.w_in[l], self.w_rec[l], self.b[l]
      gates_in = h_seq @ w_in + b  # all time steps at once; only the recurrence is sequential

      def cell(carry, g):
        h, c = carry
        i, f, o, u = jnp.split(g + h @ w_rec, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(u)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

      (h, c), out = jax.lax.scan(cell, (state[l, 0], state[l, 1]), jnp.swapaxes(gates_in, 0, 1))
      h_seq = jnp.swapaxes(out, 0, 1)
      new.append(jnp.stack([h, c]))
    y = (h_seq + x.astype(jnp.float32)).astype(x.dtype)
    return y, (None if whole else jnp.stack(new))


def _run(layers: Sequence[nnx.Module], x: Array, states: list | None,
         remat: str = "none") -> tuple[Array, list | None]:
  """Apply stateful layers in order; stateless ones (activations) take no state. On a
  whole signal (no states), residual units run under `remat` (vqlab.nn.transformer's
  policies: their activations recomputed in the backward)."""
  new = [] if states is not None else None
  for i, layer in enumerate(layers):
    if remat != "none" and states is None and isinstance(layer, ResidualUnit):
      x, s = checkpointed(layer, remat, lambda unit, h: unit.apply(h)[0], x), None
    elif hasattr(layer, "apply"):
      x, s = layer.apply(x, None if states is None else states[i])
    else:
      x, s = layer(x), None
    if new is not None:
      new.append(s)
  return x, new


def _init_states(layers: Sequence[nnx.Module], batch: int) -> list:
  return [layer.init_state(batch) if hasattr(layer, "init_state") else None for layer in layers]


class ResidualUnit(nnx.Module):
  """x + conv1(act(conv_k,dilated(act(x))))."""

  def __init__(self, dim: int, dilation: int, shape: SEANetShape, rngs: nnx.Rngs):
    kw = dict(causal=shape.causal, weight_norm=shape.weight_norm, rngs=rngs)
    self.layers = nnx.List([
        _activation(shape.activation, dim),
        Conv1d(dim, dim, shape.residual_kernel, dilation=dilation, **kw),
        _activation(shape.activation, dim),
        Conv1d(dim, dim, 1, **kw)])

  def init_state(self, batch: int) -> list:
    return _init_states(self.layers, batch)

  def apply(self, x: Array, state: list | None = None):
    y, state = _run(self.layers, x, state)
    return x + y, state


class _Stack(nnx.Module):
  """Layers applied in order, with the streaming state of each."""

  layers: nnx.List

  def init_state(self, batch: int) -> list:
    return _init_states(self.layers, batch)

  def apply(self, x: Array, state: list | None = None):
    return _run(self.layers, x, state, self.shape.remat)

  def __call__(self, x: Array) -> Array:
    return self.apply(x)[0]


class SEANetEncoder(_Stack):
  """Waveform (B, T, audio_channels), T a multiple of the hop -> latents (B, T / hop, latent_dim)."""

  def __init__(self, shape: SEANetShape, rngs: nnx.Rngs):
    shape.check()
    kw = dict(causal=shape.causal, weight_norm=shape.weight_norm, rngs=rngs)
    ch = shape.channels
    layers = [Conv1d(shape.audio_channels, ch, shape.kernel, **kw)]
    for s in shape.strides:
      layers += [ResidualUnit(ch, d, shape, rngs) for d in shape.dilations]
      layers += [_activation(shape.activation, ch), Conv1d(ch, 2 * ch, 2 * s, stride=s, **kw)]
      ch *= 2
    if shape.lstm_layers:
      layers.append(LSTM(ch, shape.lstm_layers, rngs))
    layers += [_activation(shape.activation, ch), Conv1d(ch, shape.latent_dim, shape.kernel, **kw)]
    self.layers = nnx.List(layers)
    self.shape = shape


class SEANetDecoder(_Stack):
  """Latents (B, F, latent_dim) -> waveform (B, F hop, audio_channels)."""

  def __init__(self, shape: SEANetShape, rngs: nnx.Rngs):
    shape.check()
    kw = dict(causal=shape.causal, weight_norm=shape.weight_norm, rngs=rngs)
    ch = shape.channels * 2 ** len(shape.strides)
    layers = [Conv1d(shape.latent_dim, ch, shape.kernel, **kw)]
    if shape.lstm_layers:
      layers.append(LSTM(ch, shape.lstm_layers, rngs))
    for s in reversed(shape.strides):
      layers += [_activation(shape.activation, ch),
                 Conv1d(ch, ch // 2, 2 * s, stride=s, transpose=True, **kw)]
      ch //= 2
      layers += [ResidualUnit(ch, d, shape, rngs) for d in shape.dilations]
    layers += [_activation(shape.activation, ch),
               Conv1d(ch, shape.audio_channels, shape.kernel, **kw)]
    self.layers = nnx.List(layers)
    self.shape = shape
