"""Independent float64 NumPy references the tests compare the library against."""

import numpy as np


def gram_schmidt(rows, eps=1e-5):
  """Modified Gram-Schmidt of the rows of ``rows`` ([K, D]) in float64.

  A vector whose squared residual is at most ``eps`` times its squared norm is
  treated as zero, the same convention as the library. Returns [K, D] vectors u_k.
  """
  rows = np.asarray(rows, np.float64)
  out = []
  for g in rows:
    u = g.copy()
    for v in out:
      n = v @ v
      if n > 0:
        u = u - (u @ v) / n * v
    if u @ u <= eps * (g @ g) or not (g @ g) > 0:
      u = np.zeros_like(u)
    out.append(u)
  return np.stack(out)


def osgd_direction(rows, eps=1e-5, rescale=None, priority=None):
  """Sum of the (rescaled) Gram-Schmidt vectors of ``rows`` in priority order."""
  rows = np.asarray(rows, np.float64)
  order = list(range(len(rows))) if priority is None else list(priority)
  u = np.zeros_like(rows)
  u[order] = gram_schmidt(rows[order], eps)
  if rescale == 'exit_norm':
    for k in range(len(rows)):
      n = np.linalg.norm(u[k])
      if n > 0:
        u[k] *= np.linalg.norm(rows[k]) / n
  total = u.sum(0)
  if rescale == 'sum_norm':
    n = np.linalg.norm(total)
    total = total * (np.linalg.norm(rows.sum(0)) / n if n > 0 else 0.0)
  return total
