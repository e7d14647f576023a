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


def _subsets(k):
  for mask in range(1, 2 ** k):
    yield np.array([(mask >> i) & 1 for i in range(k)], bool)


def simplex_qp(gram, linear=None, support=None):
  """``argmin_{w in simplex} w'Gw / 2 + linear'w`` exactly, in float64, by every active set.

  For each support F the equality-constrained minimizer solves the KKT system
  ``[[G_FF, 1], [1', 0]] [w; nu] = [-linear_F; 1]`` (least squares where it is
  singular); the answer is the feasible one with the smallest objective.
  ``support`` restricts the simplex to those exits (the rest weigh 0).
  """
  gram = np.asarray(gram, np.float64)
  k = len(gram)
  linear = np.zeros(k) if linear is None else np.asarray(linear, np.float64)
  support = np.ones(k, bool) if support is None else np.asarray(support, bool)
  best, best_value = np.zeros(k), np.inf
  for free in _subsets(k):
    if np.any(free & ~support):
      continue
    idx = np.flatnonzero(free)
    system = np.block([[gram[np.ix_(idx, idx)], np.ones((len(idx), 1))],
                       [np.ones((1, len(idx))), np.zeros((1, 1))]])
    solution = np.linalg.lstsq(system, np.concatenate([-linear[idx], [1.0]]), rcond=1e-13)[0]
    w = np.zeros(k)
    w[idx] = solution[:-1]
    if abs(w.sum() - 1) > 1e-8 or np.any(w < -1e-10):
      continue
    value = w @ gram @ w / 2 + linear @ w
    if value < best_value:
      best, best_value = np.maximum(w, 0) / np.maximum(w, 0).sum(), value
  return best


def box_qp(gram, lower):
  """``argmin_{v >= lower} v'Gv`` exactly, in float64, by every active set."""
  gram = np.asarray(gram, np.float64)
  lower = np.asarray(lower, np.float64)
  k = len(gram)
  best, best_value = lower.copy(), lower @ gram @ lower
  for free in _subsets(k):
    idx, held = np.flatnonzero(free), np.flatnonzero(~free)
    v = lower.copy()
    v[idx] = np.linalg.lstsq(gram[np.ix_(idx, idx)], -gram[np.ix_(idx, held)] @ lower[held],
                             rcond=1e-13)[0]
    if np.any(v < lower - 1e-10 * (1 + np.abs(lower))):
      continue
    value = v @ gram @ v
    if value < best_value:
      best, best_value = v, value
  return best


def cagrad_certificate(rows, weights, c=0.5):
  """``(worst, bound)`` for CAGrad's direction from ``weights``, in float64.

  ``worst`` is the worst exit's improvement ``min_k <g_k, d>`` of the unscaled
  direction ``d = (1 + c^2) J' weights``; ``bound = F(w) >= max`` over the ball of
  that worst improvement (weak duality, ``w`` recovered from the weights), so
  ``bound - worst >= 0`` is the suboptimality and ``worst > 0`` is descent (over the
  exits with a non-zero gradient).
  """
  rows = np.asarray(rows, np.float64)
  k = len(rows)
  mean = np.full(k, 1 / k)
  g0 = mean @ rows
  radius = c * np.linalg.norm(g0)
  reached = np.linalg.norm(rows, axis=1) > 0  # an exit with a zero gradient cannot improve
  d = (1 + c ** 2) * (np.asarray(weights, np.float64) @ rows)
  lam_w = (1 + c ** 2) * np.asarray(weights, np.float64) - mean
  w = lam_w / lam_w.sum() if abs(lam_w.sum()) > 0 else mean
  g_w = w @ rows
  worst = np.min(rows[reached] @ d) if reached.any() else 0.0
  return worst, g0 @ g_w + radius * np.linalg.norm(g_w)


def cagrad_optimum(rows, c=0.5):
  """The best worst-exit improvement in CAGrad's ball, ``min_w F(w)``, in float64 (by
  golden-section search on the convex ``s -> min_w |g_w|^2 / (2s) + <g0, g_w> / r + s / 2``
  with each inner problem solved exactly by :func:`simplex_qp`)."""
  rows = np.asarray(rows, np.float64)
  gram = rows @ rows.T
  k = len(rows)
  mean = np.full(k, 1 / k)
  b = gram @ mean
  radius = c * np.sqrt(mean @ b)
  support = np.diag(gram) > 0
  if radius == 0:
    return 0.0
  value = lambda w: b @ w + radius * np.sqrt(max(w @ gram @ w, 0.0))
  phi = lambda s: value(simplex_qp(gram, s / radius * b, support))
  low, high = -30.0, np.log(np.sqrt(np.max(np.diag(gram)))) + 1
  ratio = (np.sqrt(5) - 1) / 2
  for _ in range(60):
    a, b_ = high - ratio * (high - low), low + ratio * (high - low)
    if phi(np.exp(a)) < phi(np.exp(b_)):
      high = b_
    else:
      low = a
  return phi(np.exp((low + high) / 2))
