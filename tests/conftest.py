"""Test-session settings: a persistent XLA compilation cache and a faster-compiling PRNG stream.

Many tests compile the same programs (the same small networks, the training
program run as a subprocess); caching them on disk for the session cuts the
suite's time without changing what runs.

JAX's default threefry is the "partitionable" variant, whose programs XLA's CPU
compiler takes about 4x longer on: initializing a small network took 9 s, 2 s
with the classic stream (ours, on this repository's CI machines). Most of the
suite's time was that. The tests check invariants and equivalences that hold
whichever random stream draws their inputs, so they use the classic one; the
documentation's examples run with the user's default (tests/test_docs.py).

For the same reason the tests compile with LLVM's optimizations off
(``JAX_DISABLE_MOST_OPTIMIZATIONS``: XLA's graph passes, fusion included, still
run). Their programs are small and compile-bound: it cut the cold suite's time by
about a fifth (ours). Set either variable to run them as users' programs run.
"""

import os
import tempfile

os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'anytime_jax_test_xla_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
os.environ.setdefault('JAX_THREEFRY_PARTITIONABLE', '0')  # read by subprocesses' JAX too
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')

import jax  # noqa: E402  (after the environment it reads)
import pytest  # noqa: E402

# A plugin may have imported JAX before this file set the environment.
for _flag in ('JAX_THREEFRY_PARTITIONABLE', 'JAX_DISABLE_MOST_OPTIMIZATIONS'):
  jax.config.update(_flag.lower(), os.environ[_flag].lower() in ('1', 'true'))


@pytest.fixture(scope='session')
def write_jpegs(tmp_path_factory):
  """``write_jpegs(num_train, num_test)``: the directory of a mock ImageNet of that size.

  Variable-size JPEG images (12-40 px a side) in 4 classes, written once per size
  for the session.
  """
  from experiments import mock_imagenet  # not every test session needs the experiments
  written = {}

  def write(num_train: int, num_test: int) -> str:
    if (num_train, num_test) not in written:
      path = str(tmp_path_factory.mktemp('jpegs'))
      mock_imagenet.write(path, num_train=num_train, num_test=num_test, num_classes=4,
                          min_side=12, max_side=40)
      written[num_train, num_test] = path
    return written[num_train, num_test]

  return write
