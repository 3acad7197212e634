"""Flux-UMT distillation step: alignment, subsets, frozen teacher, compiles, sharding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flux_jax import sharding
from flux_jax.model.fluxvit import (DistillStudent, dummy_tokens, init_params, make_model,
                                    stack_blocks)
from flux_jax.model.teacher import Teacher
from flux_jax.tokens.select import select_tokens
from flux_jax.tokens.token_batch import TokenBatch, patchify
from flux_jax.train import distill
from flux_jax.train.state import TrainState
from flux_jax.xla import CompileCounter

TINY = dict(variant='tiny', num_classes=3, embed_dim=32, depth=2, num_heads=2,
            attn_pool_num_heads=2, clip_embed_dim=32, pos_grid=(4, 4, 4),
            head_budgets=(48, 32, 16), layerscale_init=1.0)  # context matters at init
N_MAX = 64
T_TOKENS = 32
GRIDS = [(4, 56, 56), (2, 56, 56), (6, 42, 42), (3, 56, 42), (8, 28, 28)]  # 5 plans


def _tokens(grid, seed=0, b=2) -> TokenBatch:
  t, h, w = grid
  video = np.random.default_rng(seed).integers(0, 256, (b, t, h, w, 3), dtype=np.uint8)
  return patchify(video, n_max=N_MAX)


@pytest.fixture(scope='module')
def models():
  student = make_model(TINY)
  teacher = make_model(dict(TINY, embed_dim=48, num_heads=3, attn_pool_num_heads=3,
                            clip_embed_dim=40))
  return student, teacher, init_params(teacher, jax.random.key(7))


def _setup(student_model, teacher_model, *, layers=(1, 0), heads=(0, 1), kind='mlp',
           teacher_head=1):
  teacher = Teacher(teacher_model, layers, teacher_head)
  student = DistillStudent(student_model, layers, teacher_model.embed_dim,
                           teacher_model.clip_embed_dim, heads, kind, kind)
  params = student.init({'params': jax.random.key(3)}, dummy_tokens(student))['params']
  return student, teacher, nn.unbox(params)


def _step(student, teacher, tx, **kw):
  opts = dict(t_tokens=T_TOKENS, s_tokens=(32, 24, 16), heads=(0, 1, 1))
  opts.update(kw)
  return distill.make_distill_step(student, teacher, tx, **opts)


def _as_teacher(student_params, teacher_params):
  """The student's params with the FluxViT part replaced by the teacher's, clip_pos 0."""
  out = dict(student_params, **teacher_params)
  out['clip_pos_embed'] = jax.tree.map(jnp.zeros_like, student_params['clip_pos_embed'])
  return out


def test_teacher_equal_to_student_lines_up_token_by_token(models):
  student_model, _, _ = models
  params = init_params(student_model, jax.random.key(0))
  student, teacher, sparams = _setup(student_model, student_model, heads=(1,),
                                     kind='identity')
  step = jax.jit(_step(student, teacher, optax.sgd(0.0), s_tokens=(32, 16), heads=(1, 1),
                       subset='group_dynamic'))
  tokens = _tokens(GRIDS[0])
  state = TrainState.create(_as_teacher(sparams, params), optax.sgd(0.0))
  _, m = step(state, tokens, jax.random.key(0), params)
  assert float(m['final_0']) < 1e-6 and float(m['mid_0']) < 1e-6
  # A subset sees other context: its features move, so the checks above can fail.
  assert float(m['final_1']) > 1e-2 and float(m['mid_1']) > 1e-4
  # With the attention output projections at 0 every token's features depend on itself
  # alone: the middle loss is 0 on a subset exactly when targets line up.
  for i in range(student_model.depth):
    attn = params[f'blocks_{i}']['attn']
    attn['proj'] = dict(attn['proj'], kernel=jnp.zeros_like(attn['proj']['kernel']))
  state = TrainState.create(_as_teacher(sparams, params), optax.sgd(0.0))
  for grid in (GRIDS[0], GRIDS[2]):
    _, m = step(state, _tokens(grid, seed=1), jax.random.key(2), params)
    assert float(m['mid_0']) < 1e-6 and float(m['mid_1']) < 1e-6, (grid, m)


def test_loss_matches_numpy_reference(models):
  """Targets by the teacher FluxViT's own selection on the clip (group-dynamic sets are
  nested), student by hand-gathered tokens, loss in numpy."""
  student_model, teacher_model, tparams = models
  student, teacher, sparams = _setup(student_model, teacher_model)
  tokens = _tokens(GRIDS[0], seed=3)
  step = jax.jit(_step(student, teacher, optax.sgd(0.0), s_tokens=(16,), heads=(1,),
                       subset='group_dynamic'))
  _, m = step(TrainState.create(sparams, optax.sgd(0.0)), tokens, jax.random.key(0), tparams)

  _, t_aux = teacher_model.apply({'params': tparams}, tokens, budget=T_TOKENS, head=1,
                                 return_layers=(1, 0))
  _, s_aux = teacher_model.apply({'params': tparams}, tokens, budget=16, head=1)
  t_index, s_index = np.asarray(t_aux['kept_index']), np.asarray(s_aux['kept_index'])
  sub = {k: np.take_along_axis(np.asarray(v), s_index.reshape(2, 16, *([1] * (v.ndim - 2))), 1)
         for k, v in (('patches', tokens.patches), ('coords', tokens.coords))}
  s_tokens = TokenBatch(sub['patches'], sub['coords'], tokens.grid, np.ones((2, 16), bool))
  mid, final, _ = student.apply({'params': sparams}, s_tokens, head=1)

  def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)

  rows = np.stack([np.searchsorted(t_index[b], s_index[b]) for b in range(2)])
  assert (np.take_along_axis(t_index, rows, 1) == s_index).all()  # nested
  layers = unit(t_aux['layers'])  # [L, B, 1 + Kt, D]
  target = np.concatenate([layers[:, :, :1], np.stack(
      [layers[:, b, 1 + rows[b]] for b in range(2)], axis=1)], axis=2)
  want_mid = np.mean(2 - 2 * np.sum(np.asarray(mid, np.float64) * target, -1))
  want_final = np.mean(2 - 2 * np.sum(np.asarray(final, np.float64) * unit(t_aux['pooled']),
                                      -1))
  np.testing.assert_allclose(float(m['mid_0']), want_mid, rtol=1e-4)
  np.testing.assert_allclose(float(m['final_0']), want_final, rtol=1e-4)
  np.testing.assert_allclose(float(m['loss']), want_mid + want_final, rtol=1e-4)


@pytest.mark.parametrize('grid', [GRIDS[0], (2, 28, 28)])
def test_subsets_are_subsets_of_the_teacher_set(models, grid):
  _, teacher_model, tparams = models
  teacher = Teacher(teacher_model, (1,), 1)
  tokens = _tokens(grid, seed=4)
  emb = jnp.asarray(np.random.default_rng(0).normal(size=(2, N_MAX, 8)), jnp.float32)
  t_index, t_keep = select_tokens(emb, tokens, T_TOKENS)
  out = teacher.apply({'params': tparams}, distill.gather_tokens(tokens, t_index, t_keep))
  out = out.replace(index=t_index)
  n_teacher = np.asarray(t_keep).sum(1)
  for method in distill.SUBSETS:
    for k in (24, 16):
      pos, keep = jax.jit(distill.choose_subset, static_argnums=(0, 1))(
          method, k, out, tokens, emb, jax.random.key(k))
      pos, keep = np.asarray(pos), np.asarray(keep)
      for b in range(2):
        kept = pos[b][keep[b]]
        assert len(kept) == min(k, n_teacher[b]), (method, k)
        assert (np.diff(kept) > 0).all() and (kept < n_teacher[b]).all()  # ascending, in set
        assert not keep[b][len(kept):].any()  # kept slots first
      if method == 'group_dynamic':  # nested: the selector's own top-K on the clip
        want, _ = select_tokens(emb, tokens, k)
        got = np.take_along_axis(np.asarray(t_index), pos, 1)
        np.testing.assert_array_equal(np.where(keep, got, -1),
                                      np.where(keep, np.asarray(want), -1))


def test_attention_subset_samples_in_proportion_to_attention(models):
  """K = 1 draws one token with probability attention / sum (torch.multinomial)."""
  _, teacher_model, tparams = models
  teacher = Teacher(teacher_model, (1,), 1)
  tokens = _tokens(GRIDS[0])
  out = teacher.apply({'params': tparams}, tokens, budget=8)
  attention = np.zeros((2, 8), np.float32)
  attention[:, :4] = [0.5, 0.3, 0.15, 0.05]
  out = out.replace(attention=jnp.asarray(attention))
  draw = jax.jit(jax.vmap(lambda r: distill.choose_subset('attention', 1, out, tokens, None,
                                                          r)[0][:, 0]))
  picks = np.asarray(draw(jax.random.split(jax.random.key(0), 4000)))  # [4000, B]
  freq = np.bincount(picks[:, 0], minlength=8) / len(picks)
  np.testing.assert_allclose(freq[:4], [0.5, 0.3, 0.15, 0.05], atol=0.03)
  assert freq[4:].sum() == 0


def test_teacher_receives_no_update_and_compiles_once(models):
  student_model, teacher_model, tparams = models
  student, teacher, sparams = _setup(student_model, teacher_model)
  tx = optax.adam(1e-3)
  initial = jax.tree.map(np.array, sparams)  # the state's buffers are donated
  state = jax.device_put(TrainState.create(sparams, tx), jax.devices()[0])
  tparams = jax.device_put(tparams, jax.devices()[0])
  before = jax.tree.map(np.array, tparams)
  step = jax.jit(_step(student, teacher, tx, subset='random'), donate_argnums=0)
  batches = [_tokens(g, seed=i) for i, g in enumerate(GRIDS)]
  batches = [jax.device_put(b, jax.devices()[0]) for b in batches]
  rng = jax.random.key(0)
  with CompileCounter() as counter:
    for tokens in batches:
      state, m = step(state, tokens, rng, tparams)
      assert np.isfinite(float(m['loss']))
  assert counter.count == 1 and int(state.step) == len(GRIDS)
  assert {'mid_0', 'final_0', 'mid_2', 'final_2', 'grad_norm'} <= set(m)
  for a, b in zip(jax.tree.leaves(tparams), jax.tree.leaves(before)):
    np.testing.assert_array_equal(np.asarray(a), b)
  assert jax.tree.structure(state.params) == jax.tree.structure(initial)
  moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(state.params),
                                                 jax.tree.leaves(initial))]
  assert sum(moved) > len(moved) // 2
  # The teacher is behind stop_gradient: no gradient reaches its params.
  grads = jax.grad(lambda p: jnp.sum(teacher.apply({'params': p}, batches[0]).pooled))(
      tparams)
  assert all(not np.asarray(g).any() for g in jax.tree.leaves(grads))


def test_one_pass_per_step_with_student_selection(models):
  student_model, teacher_model, tparams = models
  student, teacher, sparams = _setup(student_model, teacher_model)
  # Also the other INFERRED teacher-set choice: the student's embeddings select it.
  step = jax.jit(_step(student, teacher, optax.sgd(0.0), s_tokens=(32, 16), heads=(0, 1),
                       passes='one', select_with='student'))
  state = TrainState.create(sparams, optax.sgd(0.0))
  seen = set()
  for i in range(6):
    _, m = step(state.replace(step=jnp.asarray(i, jnp.int32)), _tokens(GRIDS[0]),
                jax.random.key(0), tparams)
    seen.add(int(m['pass']))
    np.testing.assert_allclose(float(m['loss']), float(m['mid']) + float(m['final']),
                               rtol=1e-6)
  assert len(seen) >= 2


def test_scanned_blocks_give_the_same_targets_and_step(models):
  """Student and teacher with scanned blocks (the middle layers from the scan's carried
  buffer): the same teacher targets, losses and updated params as unrolled."""
  student_model, teacher_model, tparams = models
  student, teacher, sparams = _setup(student_model, teacher_model)
  tokens, rng = _tokens(GRIDS[2], seed=4), jax.random.key(3)
  tx = optax.sgd(0.1)
  out = {}
  for scan in (False, True):
    s = DistillStudent(student_model.clone(scan_layers=scan), student.layers,
                       student.target_dim, student.target_final_dim, student.heads,
                       student.layer_decoder, student.final_decoder)
    t = Teacher(teacher_model.clone(scan_layers=scan), teacher.layers, teacher.head)
    sp, tp = ((stack_blocks(sparams, 2), stack_blocks(tparams, 2)) if scan
              else (sparams, tparams))
    parts = distill.make_distill_parts(s, t, tx, t_tokens=T_TOKENS, s_tokens=(32, 24, 16),
                                       heads=(0, 1, 1))
    targets = jax.jit(parts.targets)(tokens, rng, tp, sp)
    state, metrics = jax.jit(_step(s, t, tx))(TrainState.create(sp, tx), tokens, rng, tp)
    out[scan] = targets.teacher, metrics, state.params
  (want_t, want_m, want_p), (got_t, got_m, got_p) = out[False], out[True]
  assert got_t.layers.shape == (2, 2, 1 + T_TOKENS, 48)
  for g, w in zip(jax.tree.leaves(got_t), jax.tree.leaves(want_t)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-6)
  for k in want_m:
    np.testing.assert_allclose(float(got_m[k]), float(want_m[k]), rtol=1e-5, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got_p,
               stack_blocks(want_p, 2))


def test_sharded_step_equals_one_device(models):
  from flux_jax.train.program import abstract_state  # pylint: disable=g-import-not-at-top
  student_model, teacher_model, tparams = models
  student, teacher, sparams = _setup(student_model, teacher_model)
  tx = optax.sgd(0.1)
  fn = _step(student, teacher, tx, s_tokens=(24, 16), heads=(0, 1))
  tokens = _tokens(GRIDS[2], seed=5, b=4)  # one sample per data x fsdp device
  rng = jax.random.key(1)
  state = TrainState.create(sparams, tx)
  want_state, want = jax.jit(fn)(state, tokens, rng, tparams)

  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  _, state_sh, _ = abstract_state(student, tx, mesh, sharding.DEFAULT_RULES)
  # The teacher on its own rules: ZeRO-3 over every batch device.
  teacher_rules = (('embed', ('fsdp', 'data')), ('mlp', 'tensor'), ('heads', 'tensor'))
  teacher_sh = sharding.param_shardings(teacher_model, mesh, teacher_rules)
  batch_sh = sharding.batch_sharding(mesh)
  got_state, got = jax.jit(fn, in_shardings=(state_sh, batch_sh, None, teacher_sh),
                           out_shardings=(state_sh, None))(
      jax.device_put(state, state_sh), jax.device_put(tokens, batch_sh), rng,
      jax.device_put(tparams, teacher_sh))
  assert teacher_sh['blocks_0']['mlp']['fc1']['kernel'].spec == (
      jax.sharding.PartitionSpec(('fsdp', 'data'), 'tensor'))
  assert got_state.params['clip_decoder_0']['head']['kernel'].sharding.mesh.size == 8
  for k in want:
    np.testing.assert_allclose(float(got[k]), float(want[k]), rtol=1e-5, err_msg=k)
  for a, b in zip(jax.tree.leaves(got_state.params), jax.tree.leaves(want_state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # the whole loop twice; make test-slow
def test_distill_run_resumes_and_exports_the_student(tmp_path_factory, tmp_path):
  """`train.mode = 'distill'` through train_and_evaluate on tiny synthetic_motion: resume
  with the recorded teacher, refuse another, export a FluxViT checkpoint for init_from."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  from flux_jax.configs import umt_synthetic  # pylint: disable=g-import-not-at-top
  from flux_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from flux_jax.model.fluxvit import model_config  # pylint: disable=g-import-not-at-top
  from flux_jax.loop import train_and_evaluate  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  teacher_model = make_model(dict(TINY, num_classes=6))
  teacher_dir = str(tmp_path / 'teacher')
  checkpoint.save_params(teacher_dir, init_params(teacher_model, jax.random.key(0)),
                         model_config(teacher_model))

  def config(teacher=teacher_dir):
    c = umt_synthetic.get_config(f'teacher={teacher},steps=3,size=tiny,batch=4')
    c.data.data_dir = data_dir
    c.model.update(embed_dim=32, depth=2, num_heads=2, attn_pool_num_heads=2,
                   clip_embed_dim=32, pos_grid=(4, 4, 4))
    c.flux.update(frames=(4, 6, 2), resolutions=(56, 70, 14), min_tokens=64, max_tokens=128)
    c.n_max = 128
    c.distill.update(teacher_layers=(1, 0), student_layers=(1, 0), t_tokens=64,
                     s_tokens=(32,), heads=(1,))
    c.checkpoint.every_steps = c.train.log_every = 1
    c.mesh.update(data=2, fsdp=2, tensor=2)
    return c

  workdir = str(tmp_path / 'run')
  train_and_evaluate(config(), workdir, stop_at=2)
  other = str(tmp_path / 'other')
  checkpoint.save_params(other, init_params(teacher_model, jax.random.key(1)),
                         model_config(teacher_model))
  with pytest.raises(ValueError, match='teacher.json'):
    train_and_evaluate(config(other), workdir)
  state, _ = train_and_evaluate(config(), workdir)
  assert int(state.step) == 3
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  assert [r['step'] for r in rows if 'loss' in r] == [1, 2, 3]
  assert all(np.isfinite(r['final_0']) for r in rows if 'loss' in r)
  model, exported = checkpoint.load_params(os.path.join(workdir, 'params'))
  assert model.embed_dim == 32 and 'clip_decoder_0' not in exported
  for key, value in exported.items():
    for a, b in zip(jax.tree.leaves(value), jax.tree.leaves(state.params[key])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  fresh = init_params(model, jax.random.key(5))
  started = checkpoint.init_from(os.path.join(workdir, 'params'), fresh)  # Flux-Multi init
  np.testing.assert_array_equal(np.asarray(started['pos_embed']),
                                np.asarray(exported['pos_embed']))
