"""Checkpoints (orbax) and the run's identity, so a killed run resumes exactly."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any

import jax
import orbax.checkpoint as ocp


def atomic_write(path: pathlib.Path, text: str) -> None:
  """Writes ``text`` so that ``path`` holds either the old or the new content, never half."""
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.')
  with os.fdopen(fd, 'w') as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def check_config(workdir: pathlib.Path, config: dict) -> None:
  """Stores the config on the first run; refuses to resume a run with another one."""
  path = workdir / 'config.json'
  if path.exists():
    saved = json.loads(path.read_text())
    if saved != config:
      diff = {k: (saved.get(k), config.get(k)) for k in set(saved) | set(config)
              if saved.get(k) != config.get(k)}
      raise SystemExit(
          f'error: {workdir} holds a run with another configuration ({diff}, as saved vs now). '
          'Use a fresh --workdir, or repeat the original flags to resume it.')
  else:
    atomic_write(path, json.dumps(config, indent=1, sort_keys=True))


class Manager:
  """Saves and restores a training-state pytree by step, keeping the last two."""

  def __init__(self, directory: pathlib.Path):
    self._manager = ocp.CheckpointManager(
        pathlib.Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False))

  def latest_step(self) -> int:
    return self._manager.latest_step() or 0

  def save(self, step: int, state: Any) -> None:
    if step not in self._manager.all_steps():
      self._manager.save(step, args=ocp.args.StandardSave(state))
      self._manager.wait_until_finished()

  def restore_latest(self, template: Any) -> tuple[Any, int]:
    """The latest checkpoint shaped and sharded like ``template``, or ``(template, 0)``."""
    step = self._manager.latest_step()
    if step is None:
      return template, 0
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    # orbax hands NamedTuples back as tuples: put the leaves into the template's structure.
    return jax.tree.unflatten(jax.tree.structure(template), jax.tree.leaves(restored)), step
