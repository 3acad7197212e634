r"""Entry point: multi-view evaluation and Token Optimization of a params checkpoint.

  python -m flux_jax.cli.evaluate --checkpoint WORKDIR/params --out /tmp/to \
      --budgets 256,128,64 --frames 4,8,12,16 --resolutions 56,84,112,140 \
      [--config configs/x.py] [--num_clips 4 --num_crops 3] [--batch_size 24] \
      [--select_split 'train[90%:]'] [--select_margin_se 1]

  python -m flux_jax.cli.evaluate --task retrieval --checkpoint CLIP_WORKDIR/params \
      --out /tmp/ret --budgets 2048,1024,512 --frames 4,8,16 --resolutions 168,224 \
      [--config configs/x.py (its data block: e.g. an MSRVTT captioned_video build)] \
      [--select_split 'train[90%:]'] [--class_names names.txt] [--prompt_templates t.txt]

--task retrieval (FluxViT-CLIP, flux_jax.eval.clip.evaluate_checkpoint): text-to-video and
video-to-text R@1/5/10, median and mean rank, each with plain similarity (`_sim`) and
with dual softmax (`_dsl`, what the paper's Table 9 reports), per budget on the plain
grid and with Token Optimization, and zero-shot top-1 from class names in prompt
templates (averaged normalised prompt embeddings; default the 16 Kinetics templates of
InternVideo2). Several captions per video: t2v ranks each caption's video, v2t counts a
video's best-ranked caption. Writes retrieval.{json,csv} and table9.md.

With --select_split (default: the run's `eval.select_split`) the best grid per budget is
picked on that held-out split and reported on the evaluation split (unbiased TO), by the
one-standard-error rule: the plain grid stays unless another beats it there by more than
--select_margin_se standard errors.

A finished training run's WORKDIR/params carries its config (the data) and evaluation
setting; a converted official checkpoint needs `--config` with a `data` block. The work
is flux_jax.eval.token_optimization.evaluate_checkpoint; this file holds flags only.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from flux_jax.cli import common
from flux_jax.eval import clip as clip_eval
from flux_jax.eval import token_optimization
from flux_jax.eval.predict import read_class_names

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line's flags, defined when run as a program: importing the module
  adds no global flag."""
  flags.DEFINE_enum('task', 'classification', ['classification', 'retrieval'],
                    'classification: multi-view top-1 and Token Optimization; retrieval: '
                    'FluxViT-CLIP zero-shot retrieval and classification.')
  flags.DEFINE_string('class_names', None, 'retrieval: class names for zero-shot, one per '
                      "line (default: the dataset's).")
  flags.DEFINE_string('prompt_templates', None, "retrieval: prompt templates with '{}', one "
                      'per line (default: the 16 Kinetics templates).')
  flags.DEFINE_string('checkpoint', None, 'Params checkpoint directory '
                      '(flux_jax.checkpoint.save_params, e.g. WORKDIR/params).')
  config_flags.DEFINE_config_file(
      'config', None, 'Experiment config whose data block to evaluate on; default: the '
      "training config in the checkpoint's metadata.", lock_config=True)
  flags.DEFINE_string('out', None, 'Directory for to.csv, to.json and to.png.')
  flags.DEFINE_list('budgets', None, "Token budgets; default: the model's "
                    'training budgets.')
  flags.DEFINE_list('frames', None, 'Candidate frame counts.')
  flags.DEFINE_list('resolutions', None, 'Candidate resolutions (pixels).')
  flags.DEFINE_integer(
      'plain_resolution', None, 'Resolution of the grid without TO (whole frames up to the '
      "budget); default: the checkpoint's evaluation resolution.")
  flags.DEFINE_integer('num_clips', None, "Temporal clips per video; default: "
                       "the checkpoint's evaluation setting, else 1.")
  flags.DEFINE_integer('num_crops', None, "Spatial crops per clip; default: "
                       "the checkpoint's evaluation setting, else 1.")
  flags.DEFINE_integer('batch_size', None, 'Views per batch; default: the '
                       'smallest multiple of num_crops and the device count '
                       '>= 16.')
  flags.DEFINE_string(
      'select_split', None, "A split held out of training (e.g. 'train[90%:]') on which the "
      "best grid per budget is picked; default: the run's eval.select_split, else none "
      "(picked on the evaluation split); '' for none.")
  flags.DEFINE_float(
      'select_margin_se', 1.0, 'With a select split: another grid replaces the plain grid '
      'only when it wins there by more than this many binomial standard errors (the '
      'one-standard-error rule); 0: the plain argmax.', lower_bound=0.0)
  common.define_job_flags()
  flags.mark_flags_as_required(['checkpoint', 'out', 'frames', 'resolutions'])


def _ints(name: str) -> list[int] | None:
  values = FLAGS[name].value
  if values is None:
    return None
  try:
    return [int(v) for v in values]
  except ValueError as e:
    raise app.UsageError(f'--{name}={",".join(values)}: not a list of integers') from e


def _log_row(row: dict) -> None:
  logging.info('budget %d, %d x %d^2: top-1 %.4f', row['budget'], row['frames'],
               row['resolution'], row['top1'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  common.start_job()
  budgets, frames, resolutions = _ints('budgets'), _ints('frames'), _ints('resolutions')
  if FLAGS.task == 'retrieval':
    _retrieval(budgets, frames, resolutions)
    return
  rows, paths = token_optimization.evaluate_checkpoint(
      FLAGS.checkpoint, FLAGS.out, frames=frames, resolutions=resolutions,
      budgets=budgets, config=FLAGS.config, plain_resolution=FLAGS.plain_resolution,
      num_clips=FLAGS.num_clips, num_crops=FLAGS.num_crops,
      batch_size=FLAGS.batch_size, select_split=FLAGS.select_split,
      select_margin_se=FLAGS.select_margin_se, progress=_log_row)
  print(f'Token Optimization of {FLAGS.checkpoint}:\n')
  print(token_optimization.markdown_table(rows))
  if paths:
    print('\nsaved ' + ', '.join(paths[k] for k in ('csv', 'json', 'png')))


def _retrieval(budgets, frames, resolutions) -> None:
  templates = (read_class_names(FLAGS.prompt_templates) if FLAGS.prompt_templates
               else clip_eval.retrieval.KINETICS_TEMPLATES)
  if any('{}' not in t for t in templates):
    raise app.UsageError(f"--prompt_templates={FLAGS.prompt_templates}: every line needs '{{}}'")
  rows, paths = clip_eval.evaluate_checkpoint(
      FLAGS.checkpoint, FLAGS.out, frames=frames, resolutions=resolutions, budgets=budgets,
      config=FLAGS.config, plain_resolution=FLAGS.plain_resolution,
      batch_size=FLAGS.batch_size, select_split=FLAGS.select_split or None,
      class_names=read_class_names(FLAGS.class_names) if FLAGS.class_names else None,
      templates=templates,
      progress=lambda r: logging.info('budget %d, %d x %d^2: t2v R@1 (dsl) %.2f',
                                      r['budget'], r['frames'], r['resolution'],
                                      r['t2v_r1_dsl']))
  picked = rows[-1].get('picked_on')
  print(f'Retrieval of {FLAGS.checkpoint} (TO picked on '
        f"{'the select split' if picked == 'select' else 'the evaluation split itself'}"
        f'):\n\n{clip_eval.table9(rows)}\n')
  print(clip_eval.table9(rows, 'v2t_r1_dsl'))
  if paths:
    print('\nsaved ' + ', '.join(paths.values()))


def run() -> None:
  _define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
