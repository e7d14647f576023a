"""The command line every declared family shares: run what is missing (resumable), then report."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Callable
from typing import Any, Optional

import jax

from experiments import pilot as pilot_lib
from experiments import train
from experiments.checkpoint import atomic_write
from experiments.study.runner import Runner
from experiments.study.store import Store


def declared_family_main(argv: Optional[list[str]], *, description: str, name: str,
                         declaration: Callable[[], str], full: Callable[[], Any],
                         quick: Callable[[], Any], run: Callable[[Any, Runner], None],
                         summarize: Callable[[Any, Store], Any],
                         report: Callable[[Any, Any, Store], str]) -> None:
  """Parses the family's flags, runs its missing runs, writes ``<name>.md`` and ``<name>.json``.

  ``full()``/``quick()`` build the family's spec (with a ``study`` whose pilot
  fixes the regime); ``report(summary, spec, store)`` is the Markdown written.
  """
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument('--out', default=None, help='default: results/ (results/quick with --quick)')
  parser.add_argument('--data_dir', default=train.data.DEFAULT_DATA_DIR)
  parser.add_argument('--quick', action='store_true', help='the same pipeline on digits, minutes')
  parser.add_argument('--report_only', action='store_true')
  parser.add_argument('--declaration', action='store_true', help='print the declared tests')
  args = parser.parse_args(argv)
  if args.declaration:
    print(declaration())
    return
  spec = quick() if args.quick else full()
  out = pathlib.Path(args.out or ('results/quick' if args.quick else 'results'))
  out.mkdir(parents=True, exist_ok=True)
  store = Store(out)
  if not jax.config.jax_compilation_cache_dir:  # type: ignore[attr-defined]
    jax.config.update('jax_compilation_cache_dir', str(pathlib.Path(args.data_dir) / 'xla_cache'))
  if not args.report_only:
    runner = Runner(store, args.data_dir)
    if pilot_lib.decided_regime(spec.study.pilot, store) is None:
      print('running the first study\'s pilot, which fixes the regime', file=sys.stderr)
      pilot_lib.run(spec.study.pilot, runner)
    run(spec, runner)
  summary = summarize(spec, store)
  text = report(summary, spec, store)
  atomic_write(out / f'{name}.md', text)
  atomic_write(out / f'{name}.json', json.dumps(summary, indent=1))
  print(text)
