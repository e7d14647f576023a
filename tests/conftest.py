"""Test-session settings: a persistent XLA compilation cache shared by the test processes.

Many tests compile the same programs (the same small networks, the training
program run as a subprocess); caching them on disk for the session cuts the
suite's time without changing what runs.
"""

import os
import tempfile

_CACHE = os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                               os.path.join(tempfile.gettempdir(), 'anytime_jax_test_xla_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
