"""Token datasets: a tokenizer's indices for a whole image dataset, as array_record files
the generators read with grain.

A directory holds `tokens-00000-of-0000N.array_record` shards and `tokens.json`
(codebook size, token grid, where the tokens came from). Each record is one example:
an `.npz` byte string with `indices` (int32, the tokenizer's index layout, e.g. (h, w)
or (h, w, levels)) and `label` when the source has one.
"""

from __future__ import annotations

import glob
import io
import json
import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import grain
import numpy as np

META = "tokens.json"


def encode_record(example: Mapping[str, np.ndarray]) -> bytes:
  buf = io.BytesIO()
  np.savez(buf, **{k: np.asarray(v) for k, v in example.items()})
  return buf.getvalue()


# np.load parses each array header with ast.literal_eval, which is not thread-safe in
# CPython 3.11 ("AST constructor recursion depth mismatch" under grain's reader threads).
_DECODE_LOCK = threading.Lock()


def decode_record(record: bytes) -> dict[str, np.ndarray]:
  with _DECODE_LOCK, np.load(io.BytesIO(record)) as f:
    return dict(f)


def write_tokens(directory: str, examples: Iterable[Mapping[str, np.ndarray]],
                 meta: Mapping[str, Any], records_per_shard: int = 100_000) -> int:
  """Write examples ({"indices": ..., "label": ...}) as array_record shards; returns the
  count. Shards are written under temporary names and renamed at the end, so a failed
  export leaves no partial dataset that looks whole."""
  from array_record.python.array_record_module import ArrayRecordWriter
  os.makedirs(directory, exist_ok=True)
  if os.path.exists(os.path.join(directory, META)):
    raise FileExistsError(f"directory: {directory!r} already holds tokens; choose another")
  tmp_paths, writer, count = [], None, 0
  for example in examples:
    if count % records_per_shard == 0:
      if writer is not None:
        writer.close()
      tmp_paths.append(os.path.join(directory, f".tmp-{len(tmp_paths):05d}.array_record"))
      writer = ArrayRecordWriter(tmp_paths[-1], "group_size:1")
    writer.write(encode_record(example))
    count += 1
  if writer is not None:
    writer.close()
  for i, path in enumerate(tmp_paths):
    os.replace(path, os.path.join(directory,
                                  f"tokens-{i:05d}-of-{len(tmp_paths):05d}.array_record"))
  with open(os.path.join(directory, META), "w") as f:
    json.dump({**meta, "num_examples": count}, f, indent=2)
  return count


class TokenSource:
  """Random-access source of exported tokens: `source[i]` -> {"indices", "label"?}."""

  def __init__(self, directory: str):
    meta_path = os.path.join(directory, META)
    if not os.path.exists(meta_path):
      raise FileNotFoundError(f"directory: expected exported tokens ({META}) in "
                              f"{directory!r}, found none")
    with open(meta_path) as f:
      self.meta = json.load(f)
    paths = sorted(glob.glob(os.path.join(directory, "tokens-*.array_record")))
    self._records = grain.sources.ArrayRecordDataSource(paths)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return decode_record(self._records[i])
