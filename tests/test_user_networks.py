"""Networks we did not write, on every front end: shared parameters, randomness, state.

Each front end (plain JAX, linen modules in plain stages, Equinox, NNX) builds a three-exit
network with a head tied across exits and a shared embedding; the staged engine must give what
``exit_jacobian`` of the whole model gives, and inference and FLOPs must run it.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import anytime_jax as aj
from anytime_jax._src.losses import cross_entropy

eqx = pytest.importorskip('equinox')

B, D, C, K = 8, 6, 3, 3
X = jax.random.normal(jax.random.key(1), (B, D))
Y = jnp.arange(B) % C


def _exit_loss(k, logits):
  return aj.exit_cross_entropy(logits[None], Y)[0]


def _close(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert u.shape == v.shape
    if jax.dtypes.issubdtype(u.dtype, jax.dtypes.prng_key):
      u, v = jax.random.key_data(u), jax.random.key_data(v)
    np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


# Plain JAX: stage k's own weight, an embedding and a head both shared by every stage, a
# batch-norm-like running mean as state, dropout from the engine's key.

def _plain_params():
  keys = jax.random.split(jax.random.key(0), K + 2)
  params = [{'w': jax.random.normal(keys[k], (D, D)) / D ** 0.5} for k in range(K)]
  shared = {'embed': jax.random.normal(keys[K], (D,)),
            'head': jax.random.normal(keys[K + 1], (D, C)) / D ** 0.5}
  return params, shared


def plain_stage(p, state, h, shared, rng=None):
  h = jnp.tanh((h + shared['embed']) @ p['w'])
  if rng is not None:  # inverted dropout, rate 1/2
    h = jnp.where(jax.random.bernoulli(rng, 0.5, h.shape), 2 * h, 0.0)
  return h, h @ shared['head'], state + jnp.mean(h)


def _plain_whole(params, shared, rng=None):
  """The same network as one function: ``[K]`` losses and the states."""
  h, losses, states = X, [], []
  for k in range(K):
    key = None if rng is None else jax.random.fold_in(rng, k)
    h, logits, state = plain_stage(params[k], 0.0, h, shared, key)
    losses.append(_exit_loss(k, logits))
    states.append(state)
  return jnp.stack(losses), states


@pytest.mark.parametrize('rng', [None, jax.random.key(7)])
def test_plain_shared_parameters_sum_every_use(rng):
  params, shared = _plain_params()
  (stage_jac, shared_jac), losses, states = jax.jit(
      lambda p, s: aj.staged_jacobian([plain_stage] * K, p, X, _exit_loss, [0.0] * K, shared=s,
                                      rng=rng))(params, shared)
  want, want_losses, want_states = aj.exit_jacobian(
      lambda ps: _plain_whole(*ps, rng), (params, shared), has_aux=True)
  _close((stage_jac, shared_jac), want)
  np.testing.assert_allclose(losses, want_losses, rtol=1e-6)
  np.testing.assert_allclose(states, want_states, rtol=1e-6)
  # The head serves every exit: each row is non-zero, not only the row of its last user.
  assert all(np.any(shared_jac['head'][k]) for k in range(K))


def test_plain_dropout_is_fixed_by_the_key():
  params, shared = _plain_params()
  run = jax.jit(lambda key: aj.staged_jacobian([plain_stage] * K, params, X, _exit_loss,
                                               [0.0] * K, shared=shared, rng=key).losses)
  np.testing.assert_array_equal(run(jax.random.key(1)), run(jax.random.key(1)))
  assert not np.allclose(run(jax.random.key(1)), run(jax.random.key(2)))


# Linen modules inside plain stages: the way in for a linen user network whose modules are
# shared (its shared parameters declared with shared=).

def test_linen_modules_in_plain_stages_with_a_shared_head():
  block, head = nn.Dense(D), nn.Dense(C)
  keys = jax.random.split(jax.random.key(0), K + 1)
  params = [block.init(keys[k], X)['params'] for k in range(K)]
  shared = head.init(keys[K], X)['params']

  def stage(p, state, h, shared, rng=None):
    h = jnp.tanh(block.apply({'params': p}, h))
    if rng is not None:
      h = nn.Dropout(0.5).apply({}, h, deterministic=False, rngs={'dropout': rng})
    return h, head.apply({'params': shared}, h), state

  def whole(ps):
    stage_params, head_params = ps
    h, losses = X, []
    for k in range(K):
      h, logits, _ = stage(stage_params[k], None, h, head_params)
      losses.append(_exit_loss(k, logits))
    return jnp.stack(losses)

  (stage_jac, shared_jac), _, _ = aj.staged_jacobian([stage] * K, params, X, _exit_loss,
                                                     shared=shared)
  _close((stage_jac, shared_jac), aj.exit_jacobian(whole, (params, shared)).grads)
  with_dropout = [aj.staged_jacobian([stage] * K, params, X, _exit_loss, shared=shared,
                                     rng=jax.random.key(s)).losses for s in (0, 0, 1)]
  np.testing.assert_array_equal(with_dropout[0], with_dropout[1])
  assert not np.allclose(with_dropout[0], with_dropout[2])


# A linen module whose stages call one head and one embedding defined in setup, with batch
# norm and dropout: one parameter each, found from the computation.

class LinenStage(nn.Module):
  embed: nn.Module
  head: nn.Module

  @nn.compact
  def __call__(self, h, train):
    h = nn.BatchNorm(use_running_average=not train)(nn.Dense(D)(self.embed(h)))
    h = nn.Dropout(0.5, deterministic=not train)(jnp.tanh(h))
    return h, self.head(h)


class LinenNet(nn.Module):
  def setup(self):
    self.embed, self.head = nn.Dense(D), nn.Dense(C)
    self.stages = [LinenStage(self.embed, self.head) for _ in range(K)]

  def __call__(self, x, train=False):
    logits = []
    for stage in self.stages:
      x, out = stage(x, train)
      logits.append(out)
    return jnp.stack(logits)


@pytest.mark.parametrize('train', [False, True])
def test_linen_module_with_shared_submodules(train):
  network = LinenNet()
  variables = network.init(jax.random.key(0), X)
  assert set(variables['params']) == {'embed', 'head', 'stages_0', 'stages_1', 'stages_2'}
  rng = jax.random.key(3) if train else None

  def whole(params):  # the stages composed, differentiated as one function
    v, h, losses = {**variables, 'params': params}, X, []
    for k in range(K):
      rngs = None if rng is None else {'dropout': jax.random.fold_in(rng, k)}
      method = lambda m, c, k=k: m.stages[k](c, train)
      if train:
        (h, logits), new = network.apply(v, h, method=method, rngs=rngs, mutable=['batch_stats'])
        v = {**v, **new}
      else:
        h, logits = network.apply(v, h, method=method)
      losses.append(_exit_loss(k, logits))
    return jnp.stack(losses), v['batch_stats']

  grads, losses, aux = jax.jit(lambda v: aj.staged_exit_jacobian(network, v, X, Y, train=train,
                                                                 rng=rng))(variables)
  want, want_losses, want_stats = aj.exit_jacobian(whole, variables['params'], has_aux=True)
  _close(grads, want)
  _close(aux['batch_stats'], want_stats)
  assert all(np.any(grads['head']['kernel'][k]) for k in range(K))
  logits = jnp.stack(list(aj.iterate_exits(network, variables, X)))
  np.testing.assert_allclose(logits, network.apply(variables, X), rtol=1e-5, atol=1e-6)
  flops = aj.exit_flops(network, variables, X)
  assert all(a < b for a, b in zip(flops, flops[1:]))


# Equinox: stage modules and a shared head as filtered pytrees.

class EqxStage(eqx.Module):
  linear: eqx.nn.Linear
  dropout: eqx.nn.Dropout

  def __call__(self, h, head, embed, key):
    h = jnp.tanh(jax.vmap(self.linear)(h + embed))
    h = self.dropout(h, key=key, inference=key is None)
    return h, jax.vmap(head)(h)


@pytest.mark.parametrize('rng', [None, jax.random.key(5)])
def test_equinox_stages_with_a_shared_head_and_embedding_dropout_and_state(rng):
  keys = jax.random.split(jax.random.key(0), K + 2)
  modules = [EqxStage(eqx.nn.Linear(D, D, key=keys[k]), eqx.nn.Dropout(0.5)) for k in range(K)]
  head = eqx.nn.Linear(D, C, key=keys[K])
  params, statics = zip(*[eqx.partition(m, eqx.is_array) for m in modules])
  head_params, head_static = eqx.partition(head, eqx.is_array)
  head_params = (head_params, jax.random.normal(keys[K + 1], (D,)))  # the head and an embedding

  def stage_k(k):
    def stage(p, state, h, shared, rng=None):  # state: a running mean of the activations
      (head_arrays, embed) = shared
      h, logits = eqx.combine(p, statics[k])(h, eqx.combine(head_arrays, head_static), embed, rng)
      return h, logits, 0.9 * state + 0.1 * jnp.mean(h)
    return stage

  stages = [stage_k(k) for k in range(K)]

  def whole(ps):
    stage_params, shared = ps
    h, losses, states = X, [], []
    for k in range(K):
      key = None if rng is None else jax.random.fold_in(rng, k)
      h, logits, state = stages[k](stage_params[k], 0.0, h, shared, key)
      losses.append(_exit_loss(k, logits))
      states.append(state)
    return jnp.stack(losses), states

  grads, _, states = aj.staged_jacobian(stages, list(params), X, _exit_loss, [0.0] * K,
                                        shared=head_params, rng=rng)
  want, _, want_states = aj.exit_jacobian(whole, (list(params), head_params), has_aux=True)
  _close(grads, want)
  np.testing.assert_allclose(states, want_states, rtol=1e-6)
  logits = list(aj.iterate_exits(stages, list(params), X, states=[0.0] * K, shared=head_params))
  assert [l.shape for l in logits] == [(B, C)] * K
  flops = aj.exit_flops(stages, list(params), X, states=[0.0] * K, shared=head_params)
  assert all(a < b for a, b in zip(flops, flops[1:]))


# NNX: an early-exit network whose stages hold one embedding and one head, with dropout and
# batch norm, trained through nnx.Optimizer with no write-back by hand.

class NNXStage(nnx.Module):
  def __init__(self, embed, head, *, rngs):
    self.embed, self.head = embed, head
    self.linear = nnx.Linear(D, D, rngs=rngs)
    self.norm = nnx.BatchNorm(D, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)

  def __call__(self, h):
    h = self.drop(jnp.tanh(self.norm(self.linear(h + self.embed[...]))))
    return h, self.head(h)


class NNXNet(nnx.Module):
  def __init__(self, rngs):
    embed = nnx.Param(jax.random.normal(rngs.params(), (D,)))
    head = nnx.Linear(D, C, rngs=rngs)
    self.stages = nnx.List([NNXStage(embed, head, rngs=rngs) for _ in range(K)])

  def __call__(self, x):
    logits = []
    for stage in self.stages:
      x, out = stage(x)
      logits.append(out)
    return jnp.stack(logits)


def _nnx_net():
  return NNXNet(nnx.Rngs(0, dropout=1))


def _nnx_reference(model, train):
  """exit_jacobian of the whole model, and the state its forward pass leaves."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def losses(p):
    whole = nnx.merge(graphdef, p, nnx.clone(rest))
    whole.train() if train else whole.eval()
    return aj.exit_cross_entropy(whole(X), Y), nnx.state(whole, nnx.Not(nnx.Param))
  return aj.exit_jacobian(losses, params, has_aux=True)


@pytest.mark.parametrize('train', [False, True])
def test_nnx_tied_head_shared_embedding_dropout_and_batch_norm(train):
  model, reference = _nnx_net(), _nnx_net()
  grads, losses, state = nnx.jit(
      lambda m: aj.nnx_staged_exit_jacobian(m, X, Y, train=train))(model)
  want, want_losses, want_state = _nnx_reference(reference, train)
  _close(grads, want)  # each shared Variable once, every use summed
  np.testing.assert_allclose(losses, want_losses, rtol=1e-6)
  # Batch statistics and RNG counts: updated in the model as one forward pass would.
  _close(nnx.state(model, nnx.Not(nnx.Param)), want_state)
  assert all(np.any(grads['stages'][0]['head']['kernel'][k]) for k in range(K))


def test_nnx_optimizer_moves_the_tied_head_by_every_exit():
  model = _nnx_net()
  before = jax.tree.map(lambda a: a, nnx.state(model, nnx.Param))  # new Variables: a snapshot
  want = _nnx_reference(_nnx_net(), train=False).grads
  optimizer = nnx.Optimizer(model, optax.chain(aj.sum_exits(), optax.sgd(1.0)), wrt=nnx.Param)
  grads, _, _ = aj.nnx_staged_exit_jacobian(model, X, Y, train=False)
  optimizer.update(model, grads)
  moved = jax.tree.map(lambda a, b: b - a, before, nnx.state(model, nnx.Param))
  _close(moved, jax.tree.map(lambda g: -jnp.sum(g, 0), want))


def test_nnx_dropout_draws_new_masks_each_step_and_repeats_from_the_same_rngs():
  step = nnx.jit(lambda m: aj.nnx_staged_exit_jacobian(m, X, Y).losses)
  model, twin = _nnx_net(), _nnx_net()
  first = step(model)
  np.testing.assert_array_equal(first, step(twin))  # same Rngs state, same masks
  assert not np.allclose(first, step(model))  # counts advanced: new masks


def test_nnx_inference_and_flops_on_a_user_model():
  model = _nnx_net()
  model.eval()
  full = model(X)
  logits = list(aj.iterate_exits(model, X))
  np.testing.assert_allclose(jnp.stack(logits), full, rtol=1e-5, atol=1e-6)
  flops = aj.exit_flops(model, X)
  assert len(flops) == K and all(a < b for a, b in zip(flops, flops[1:]))
  result = aj.early_exit(model, X, threshold=0.0)
  assert np.all(result.exits == 0) and np.all(result.flops == flops[0])


def test_our_nnx_models_serve_inference_and_flops():
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
  model = aj.create_nnx('branched', num_classes=C, num_exits=2, width=2, num_levels=1,
                        example=x, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(jnp.stack(list(aj.iterate_exits(model, x))), model(x), rtol=1e-6)
  network = aj.models.create('branched', num_classes=C, num_exits=2, width=2, num_levels=1)
  variables = aj.models.init_variables(network, jax.random.key(0), x)
  assert aj.exit_flops(model, x) == aj.exit_flops(network, variables, x)


def test_plain_stages_serve_inference_and_flops():
  params, shared = _plain_params()
  logits = list(aj.iterate_exits([plain_stage] * K, params, X, states=[0.0] * K, shared=shared))
  h, want = X, []
  for k in range(K):
    h, out, _ = plain_stage(params[k], 0.0, h, shared)
    want.append(out)
  np.testing.assert_allclose(jnp.stack(logits), jnp.stack(want), rtol=1e-6)
  flops = aj.exit_flops([plain_stage] * K, params, X, states=[0.0] * K, shared=shared)
  assert flops[0] > 2 * D * (D + C) and all(a < b for a, b in zip(flops, flops[1:]))


# Errors that name the contract, at trace time.

def test_a_stage_of_the_wrong_arity_names_the_contract():
  two = lambda p, state, h: (h @ p, h @ p)  # forgot the state
  with pytest.raises(TypeError, match=r'stage 0 returned a tuple of 2.*\(carry, logits_k, state_k\)'):
    aj.staged_jacobian([two], [jnp.eye(D)], X, _exit_loss)
  with pytest.raises(TypeError, match='stage 0 returned a tuple of 2'):
    list(aj.iterate_exits([two], [jnp.eye(D)], X))


def test_a_per_example_loss_is_refused():
  per_example = lambda k, logits: optax.softmax_cross_entropy_with_integer_labels(logits, Y)
  params, shared = _plain_params()
  with pytest.raises(ValueError, match=r'exit 0.s loss has shape \(8,\).*scalar.*mean'):
    aj.staged_jacobian([plain_stage] * K, params, X, per_example, [0.0] * K, shared=shared)


def test_logits_of_the_wrong_rank_are_refused():
  flat = lambda p, state, h: (h, (h @ p).ravel(), state)
  with pytest.raises(ValueError, match=r'logits \[B, C\]'):
    list(aj.iterate_exits([flat], [jnp.eye(D)], X))
  with pytest.raises(ValueError, match=r'logits \[B, C\]'):
    aj.staged_jacobian([flat], [jnp.eye(D)], X, lambda k, l: cross_entropy(l, Y))


def test_nnx_errors_name_the_contract():
  class NoStages(nnx.Module):
    def __init__(self):
      self.blocks = nnx.List([nnx.Linear(D, C, rngs=nnx.Rngs(0))])

  with pytest.raises(ValueError, match="no non-empty sequence attribute 'stages'"):
    aj.nnx_staged_exit_jacobian(NoStages(), X, Y)
  with pytest.raises(TypeError, match=r'stage 0 returned one array of shape \(8, 3\).*\(carry, logits'):
    aj.nnx_staged_exit_jacobian(NoStages(), X, Y, stages='blocks')
  model = _nnx_net()
  with pytest.raises(ValueError, match='share a Variable'):
    aj.nnx_stages(list(model.stages))


def test_per_exit_gradients_whose_exit_count_disagrees_are_refused():
  params, shared = _plain_params()
  with pytest.raises(ValueError, match='3 stages but 2 parameter pytrees'):
    aj.staged_jacobian([plain_stage] * K, params[:2], X, _exit_loss, shared=shared)
  with pytest.raises(ValueError, match='3 stages, 2 parameter pytrees'):
    aj.exit_flops([plain_stage] * K, params[:2], X, shared=shared)
