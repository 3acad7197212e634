r"""A Table 9 analogue on this machine: FluxViT-CLIP on synthetic_captions, against a
single-budget CLIP trained for the same steps.

  python -m flux_jax.experiments.clip_synthetic --workdir workdir/clip [--steps 600] \
      [--size small] [--frames 4,8,16 --resolutions 56,112]      (or: make clip)

1. builds synthetic_captions 'small' (1200 train / 240 validation clips of synthetic_motion
   scenes with 3-5 templated captions each; 3 templates held out of training);
2. trains configs/clip_synthetic.py twice from scratch, both towers: Flux-CLIP (heads for
   64/32/16 tokens, a VTC loss per budget plus smooth-L1 to the 64-token embedding, Flux
   grids of 64-256 raw tokens) and single-budget CLIP (one head at 64 tokens, the same
   grids), on train[:90%];
3. evaluates each at 64/32/16 tokens on validation: t2v and v2t R@1 (dual softmax, as
   Table 9) on the plain grid (whole 56^2 frames up to the budget) and with Token
   Optimization (the best grid of --frames x --resolutions picked on train[90%:]), and
   zero-shot top-1 over the 6 motion classes (CLASS_PHRASES in PROMPT_TEMPLATES); binomial
   standard errors; the oracle ceiling of the captions (a caption names only colour and
   motion, so several validation clips fit it: R@1 is bounded below 100);
4. prints the table, saves WORKDIR/results.json and a plot of R@1 against GFLOPs.
"""

from __future__ import annotations

import json
import math
import os
import time

from absl import app
from absl import flags
from absl import logging
import jax
import matplotlib

from flux_jax import checkpoint
from flux_jax import config as config_lib
from flux_jax import sharding
from flux_jax.data import captions
from flux_jax.data.sources import open_builder
from flux_jax.eval import clip as clip_eval
from flux_jax.experiments.common import train_once

FLAGS = flags.FLAGS
RUNS = {'flux': 'Flux-CLIP (64/32/16)', 'single': 'single-budget CLIP (64)'}
BUDGETS = (64, 32, 16)
SELECT = 'train[90%:]'  # held out of training: TO picks its grid here


def _define_flags() -> None:
  """The command line's flags, defined when run as a program: importing the module
  adds no global flag."""
  flags.DEFINE_string('config', config_lib.recipe('clip_synthetic'), 'The recipe (PATH); '
                      '--steps, --size, --batch and the run set its arg.')
  flags.DEFINE_string('workdir', 'workdir/clip', 'Dataset, runs and results.')
  flags.DEFINE_integer('steps', 600, 'Training steps of each run.')
  flags.DEFINE_integer('batch', 32, 'Global batch (clips, one caption each).')
  flags.DEFINE_string('size', 'small', "synthetic_captions config ('tiny': a smoke run).")
  flags.DEFINE_list('frames', ['4', '8', '16'], 'Token Optimization frame counts.')
  flags.DEFINE_list('resolutions', ['56', '112'], 'Token Optimization resolutions.')


def run_config(run: str, *, steps: int, size: str, batch: int, data_dir: str,
               base: str = 'clip_synthetic'):
  """The recipe `base` for `run` (a key of RUNS), trained on train[:90%]."""
  path = base.partition(':')[0]
  config = config_lib.load(f'{path}:steps={steps},size={size},batch={batch},'
                           f"budgets={'multi' if run == 'flux' else 'single'}")
  config.data.update(data_dir=data_dir, train_split='train[:90%]')
  config.eval.every_steps = -1  # evaluated below, with TO
  return config


def oracle_r1(source) -> float:
  """t2v R@1 of a perfect reader of the captions: a caption's best videos are those whose
  scene has its colour and motion; ties count against it (retrieval.ranks)."""
  texts, owner = clip_eval.caption_table(source)
  facts = [captions.parse(t) for t in texts]
  truth = {}
  for fact, video in zip(facts, owner):
    truth.setdefault(int(video), set()).add((fact.color, fact.label))
  hits = 0
  for fact, video in zip(facts, owner):
    fits = sum((fact.color, fact.label) in pairs for pairs in truth.values())
    hits += fits == 1
  return 100.0 * hits / len(texts)


def se(percent: float, n: int) -> float:
  p = percent / 100.0
  return 100.0 * math.sqrt(p * (1 - p) / n) if n else float('nan')


def evaluate(params_dir: str, config, frames, resolutions):
  model, params = checkpoint.load_params(params_dir)
  builder = open_builder(config.data)
  val = builder.as_data_source(config.data.eval_split)
  select = builder.as_data_source(SELECT)
  mesh = sharding.make_mesh({'data': -1})
  rows = clip_eval.evaluate(
      model, params, val, budgets=BUDGETS, frames=frames, resolutions=resolutions,
      plain_resolution=config.eval.resolution, batch_size=config.eval.batch_size,
      sharding=sharding.batch_sharding(mesh), select_source=select,
      class_names=captions.CLASS_PHRASES, templates=captions.PROMPT_TEMPLATES,
      progress=lambda r: print(f"  {r['budget']} tokens, {r['frames']} x "
                               f"{r['resolution']}^2: t2v R@1 {r['t2v_r1_dsl']:.1f}",
                               flush=True))
  return rows, val


def table(results: dict) -> str:
  out = ['| model | tokens | t2v R@1 plain | t2v R@1 TO | v2t R@1 plain | v2t R@1 TO | '
         'zero-shot top-1 | GFLOPs plain / TO |', '|---|---|---|---|---|---|---|---|']
  for run, rows in results.items():
    for budget in BUDGETS:
      plain = next(r for r in rows if r['budget'] == budget and r['kind'] == 'plain')
      to = next(r for r in rows if r['budget'] == budget and r['kind'] == 'to')
      cell = lambda r, k, n: f'{r[k]:.1f} ± {se(r[k], r[n]):.1f}'
      out.append(
          f"| {RUNS[run]} | {budget} | {cell(plain, 't2v_r1_dsl', 'captions')} | "
          f"{cell(to, 't2v_r1_dsl', 'captions')} ({to['frames']}x{to['resolution']}^2) | "
          f"{cell(plain, 'v2t_r1_dsl', 'videos')} | {cell(to, 'v2t_r1_dsl', 'videos')} | "
          f"{100 * plain['zero_shot_top1']:.1f} ± "
          f"{se(100 * plain['zero_shot_top1'], plain['zero_shot_videos']):.1f} | "
          f"{plain['gflops']:.2f} / {to['gflops']:.2f} |")
  return '\n'.join(out)


def plot(results: dict, path: str, ceiling: float) -> None:
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for (run, rows), color in zip(results.items(), ('tab:blue', 'tab:orange')):
    for kind, style in (('plain', 'o--'), ('to', 's-')):
      pts = sorted((r['gflops'], r['t2v_r1_dsl']) for r in rows if r['kind'] == kind)
      ax.plot(*zip(*pts), style, color=color, label=f'{RUNS[run]}, {kind}')
  ax.axhline(ceiling, color='gray', lw=0.8, ls=':', label='caption ceiling')
  ax.set_xlabel('GFLOPs per clip')
  ax.set_ylabel('t2v R@1 (dual softmax), %')
  ax.set_title('FluxViT-CLIP on synthetic_captions (validation)')
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  t0 = time.perf_counter()
  root = os.path.abspath(FLAGS.workdir)
  data_dir = os.path.join(root, 'tfds')
  frames = [int(f) for f in FLAGS.frames]
  resolutions = [int(r) for r in FLAGS.resolutions]
  results, val = {}, None
  for run in RUNS:
    config = run_config(run, steps=FLAGS.steps, size=FLAGS.size, batch=FLAGS.batch,
                        data_dir=data_dir, base=FLAGS.config)
    start = time.perf_counter()
    params = train_once(config, os.path.join(root, run))
    print(f'{RUNS[run]}: trained in {time.perf_counter() - start:.0f} s', flush=True)
    start = time.perf_counter()
    results[run], val = evaluate(params, config, frames, resolutions)
    print(f'{RUNS[run]}: evaluated in {time.perf_counter() - start:.0f} s', flush=True)
  ceiling = oracle_r1(val)
  with open(os.path.join(root, 'results.json'), 'w') as f:
    json.dump({'rows': results, 'ceiling_t2v_r1': ceiling, 'steps': FLAGS.steps}, f, indent=1)
  plot(results, os.path.join(root, 'clip_r1_gflops.png'), ceiling)
  print(f'\nFluxViT-CLIP on synthetic_captions/{FLAGS.size}, {FLAGS.steps} steps each, '
        f'validation ({results["flux"][0]["videos"]} clips, {results["flux"][0]["captions"]} '
        f'captions; chance t2v R@1 {100 / results["flux"][0]["videos"]:.1f}%, caption '
        f'ceiling {ceiling:.1f}%); TO picked on {SELECT}:\n{table(results)}')
  print(f'\nsaved {root}/results.json and clip_r1_gflops.png; {time.perf_counter() - t0:.0f} s '
        f'in all; jax {jax.__version__} on {jax.devices()[0].platform}')


def run() -> None:
  _define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
