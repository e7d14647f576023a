"""Prints every model's parameters and cumulative FLOPs per exit.

The ViT is listed twice: branched (its default) and width-nested (``growth='width'``).

From 128 pixels on a side (e.g. ``--input_shape 224,224,3``) the networks get a
stem and four resolution levels (``anytime_jax.models.input_options``), as the
trainer builds them.

  python -m experiments.describe [--input_shape 28,28,1] [--num_classes 10] [--num_exits 4]
"""

import argparse

import jax
import jax.numpy as jnp

import anytime_jax as aj
from anytime_jax import models


# Every architecture at its defaults, and the ViT's width nesting besides its branched default.
VARIANTS: list[tuple[str, str, dict[str, str]]] = (
    [(name, name, {}) for name in models.ARCHITECTURES]
    + [('vit growth=width', 'vit', {'growth': 'width'})])


def describe(input_shape, num_classes, num_exits):
  """Rows of (model, width, exit, params through that exit, cumulative MFLOPs)."""
  x = jnp.zeros((1, *input_shape), jnp.float32)
  rows = []
  for label, name, options in VARIANTS:
    # The ViT has no stem or resolution levels; large images want a larger patch_size.
    levels = {} if name == 'vit' else models.input_options(input_shape)
    network = models.create(name, num_classes=num_classes, num_exits=num_exits, **levels,
                            **options)
    variables = jax.eval_shape(lambda: network.init(jax.random.key(0), x))
    flops = aj.exit_flops(network, variables, x)
    width = models.NESTED_VIT_WIDTH if options else models.DEFAULT_WIDTH[name]
    params = 0
    for k in range(num_exits):
      params += sum(p.size for p in jax.tree.leaves(models.stage_variables(variables, k)['params']))
      rows.append((label, width, k + 1, params, flops[k] / 1e6))
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--input_shape', default='28,28,1')
  parser.add_argument('--num_classes', type=int, default=10)
  parser.add_argument('--num_exits', type=int, default=4)
  args = parser.parse_args(argv)
  shape = tuple(int(v) for v in args.input_shape.split(','))
  print(f'input {shape}, {args.num_classes} classes, {args.num_exits} exits; '
        'params and FLOPs are cumulative up to each exit')
  print('| model | width | exit | params | MFLOPs |')
  print('|---|---|---|---|---|')
  for name, width, k, params, mflops in describe(shape, args.num_classes, args.num_exits):
    print(f'| {name} | {width} | {k} | {params:,} | {mflops:.2f} |')


if __name__ == '__main__':
  main()
