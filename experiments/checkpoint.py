"""Checkpoints (orbax) and the run's identity, so a killed run resumes exactly."""

from __future__ import annotations

import json
import os
import pathlib
import sys
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


def check_config(workdir: pathlib.Path, config: dict, defaults: dict | None = None) -> None:
  """Stores the config on the first run; refuses to resume a run with another one.

  ``defaults`` fill the fields a run saved by an older version lacks.
  """
  path = workdir / 'config.json'
  if path.exists():
    saved = {**(defaults or {}), **json.loads(path.read_text())}
    if saved != config:
      diff = {k: (saved.get(k), config.get(k)) for k in set(saved) | set(config)
              if saved.get(k) != config.get(k)}
      raise SystemExit(
          f'error: {workdir} holds a run with another configuration ({diff}, as saved vs now). '
          'Use a fresh --workdir, or repeat the original flags to resume it.')
  elif jax.process_index() == 0:
    atomic_write(path, json.dumps(config, indent=1, sort_keys=True))


class Manager:
  """Saves and restores a training-state pytree by step, keeping the last two."""

  def __init__(self, directory: pathlib.Path):
    self.directory = pathlib.Path(directory).absolute()
    self._manager = ocp.CheckpointManager(
        pathlib.Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False))

  def latest_step(self) -> int:
    return self._manager.latest_step() or 0

  def save(self, step: int, state: Any) -> None:
    if step not in self._manager.all_steps():
      self._manager.save(step, args=ocp.args.StandardSave(state))
      self._manager.wait_until_finished()

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def drop_from(self, step: int) -> int:
    """Deletes every checkpoint at ``step`` or later; returns the latest step kept (0: none)."""
    for s in self.steps():
      if s >= step:
        self._manager.delete(s)
    return self.latest_step()

  def restore(self, step: int, template: Any) -> Any:
    """Checkpoint ``step`` shaped and sharded like ``template``."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    # orbax hands NamedTuples back as tuples: put the leaves into the template's structure.
    return jax.tree.unflatten(jax.tree.structure(template), jax.tree.leaves(restored))

  def restore_latest(self, template: Any) -> tuple[Any, int]:
    """The latest readable checkpoint of this run, or ``(template, 0)``.

    A checkpoint that cannot be read (cut short by a crash, truncated on disk)
    is reported, deleted so that it is written again, and the one before it
    is tried.
    """
    for step in reversed(self.steps()):
      try:
        return self.restore(step, template), step
      except Exception as e:  # pylint: disable=broad-except  # orbax/tensorstore raise many kinds
        print(f'warning: checkpoint {step} in {self.directory} is unreadable '
              f'({type(e).__name__}: {str(e)[:200]}); deleting it and resuming from an older '
              'one', file=sys.stderr)
        self._manager.delete(step)
    return template, 0
