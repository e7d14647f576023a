"""experiments.drift: the weight trace of a real training run, and the drift statistics by hand."""

import numpy as np
import pytest

from experiments import data, drift, train


def test_drift_by_hand():
  trace = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])  # [T, K]
  lags = drift.drift(trace, lags=(1, 2))
  # lag 1: orthogonal pairs; changes |(-1, 2)| / 1 and |(3, -2)| / 2
  np.testing.assert_allclose(lags['lags'][1]['cosine'][1], 0.0)
  np.testing.assert_allclose(lags['lags'][1]['relative_change'][1],
                             np.median([5 ** 0.5, 13 ** 0.5 / 2]))
  # lag 2: (1, 0) and (3, 0) point the same way; change 2 / 1
  np.testing.assert_allclose(lags['lags'][2]['cosine'], [1.0] * 3)
  np.testing.assert_allclose(lags['lags'][2]['relative_change'], [2.0] * 3)
  assert lags['negative_fraction'] == 0.0 and lags['steps'] == 3
  assert 4 not in drift.drift(trace, lags=(1, 4))['lags']  # a lag the trace cannot hold


def test_weight_trace_of_a_short_run(tmp_path):
  data.prepare('digits', str(tmp_path))
  config = train.Config(model='branched', dataset='digits', batch_size=32, num_exits=3, width=4)
  trace = drift.weight_trace(config, steps=6, data_dir=str(tmp_path), skip=2)
  assert trace.shape == (6, 3) and np.all(np.isfinite(trace))
  assert len({tuple(row) for row in trace}) > 1  # the weights move


def test_a_summed_optimizer_has_no_weights(tmp_path):
  data.prepare('digits', str(tmp_path))
  config = train.Config(model='branched', dataset='digits', optimizer='sgd', num_exits=2, width=4)
  with pytest.raises(SystemExit, match='has no combination weights'):
    drift.weight_trace(config, steps=2, data_dir=str(tmp_path))
