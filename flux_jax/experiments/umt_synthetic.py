r"""Flux-UMT end to end on synthetic_motion, against a student trained from scratch.

  python -m flux_jax.experiments.umt_synthetic --workdir workdir/umt [--teacher_steps 400] \
      [--teacher DIR] [--distill_steps 300] [--finetune_steps 200] [--scratch_steps 200,500]

1. teacher: Flux-Multi on synthetic_motion (configs/synthetic_demo.py), or `--teacher`, the
   params of a finished synthetic_demo run (e.g. `make demo`'s);
2. student: Flux-UMT distillation from it (configs/umt_synthetic.py);
3. the distilled student fine-tuned with Flux-Multi (`config.init` = its WORKDIR/params),
   and the same student from scratch for each of `--scratch_steps` (default: the
   fine-tuning steps, and the distillation plus fine-tuning steps);
4. both evaluated on an 8 x 112^2 grid at the full, 1/2 and 1/4 budgets.

Each stage resumes or skips from its workdir, so a rerun continues where it stopped.
"""

from __future__ import annotations

import os
import time

from absl import app
from absl import flags
from absl import logging

from flux_jax import config as config_lib
from flux_jax import checkpoint
from flux_jax import sharding
from flux_jax.data.sources import open_dataset
from flux_jax.eval import budgets
from flux_jax.experiments.common import train_once

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line's flags, defined when run as a program: importing the module
  adds no global flag."""
  flags.DEFINE_string('config', config_lib.recipe('synthetic_demo.py'), 'Config of the '
                      'teacher and the fine-tuning runs (PATH[:arg]).')
  flags.DEFINE_string('distill_config', config_lib.recipe('umt_synthetic.py'), 'Flux-UMT '
                      'config whose get_config takes teacher= and steps=, and whose STUDENT '
                      'sets the fine-tuned student\'s model.')
  flags.DEFINE_string('workdir', 'workdir/umt', 'Dataset, runs and results.')
  flags.DEFINE_string('teacher', '', 'Params of a trained synthetic_demo teacher; '
                      'empty: train one for --teacher_steps.')
  flags.DEFINE_integer('teacher_steps', 400, 'Teacher Flux-Multi steps.')
  flags.DEFINE_integer('distill_steps', 300, 'Flux-UMT steps.')
  flags.DEFINE_integer('finetune_steps', 200, 'Student Flux-Multi steps.')
  flags.DEFINE_list('scratch_steps', None, 'Steps of each from-scratch '
                    'student (default: finetune, distill + finetune).')


def _finetune_config(data_dir: str, init: str, steps: int):
  config = config_lib.load(FLAGS.config)
  config.train.steps = steps
  config.data.data_dir = data_dir
  config.model.update(config_lib.load_module(FLAGS.distill_config).STUDENT)
  config.init = init
  config.eval.every_steps = 0
  return config


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  t0 = time.perf_counter()
  root = os.path.abspath(FLAGS.workdir)
  data_dir = os.path.join(root, 'tfds')

  teacher = config_lib.load(FLAGS.config)
  teacher.train.steps = FLAGS.teacher_steps
  teacher.data.data_dir = data_dir
  teacher_params = (os.path.abspath(FLAGS.teacher) if FLAGS.teacher else
                    train_once(teacher, os.path.join(root, 'teacher')))
  _, val, _ = open_dataset(teacher.data)  # builds the dataset on first use

  student = config_lib.load_module(FLAGS.distill_config).get_config(
      f'teacher={teacher_params},steps={FLAGS.distill_steps}')
  student.data.data_dir = data_dir
  distilled = train_once(student, os.path.join(root, 'distill'))

  finetune = FLAGS.finetune_steps
  runs = {'teacher': teacher_params,
          f'Flux-UMT {FLAGS.distill_steps} + Flux-Multi {finetune}': train_once(
              _finetune_config(data_dir, distilled, finetune), os.path.join(root, 'finetune'))}
  scratch = FLAGS.scratch_steps or [finetune, FLAGS.distill_steps + finetune]
  for steps in dict.fromkeys(int(s) for s in scratch):
    runs[f'scratch Flux-Multi {steps}'] = train_once(
        _finetune_config(data_dir, '', steps), os.path.join(root, f'scratch_{steps}'))
  batch = sharding.batch_sharding(sharding.make_mesh(dict(teacher.mesh)))
  rows = []
  for name, path in runs.items():
    model, params = checkpoint.load_params(path)
    full = model.head_budgets[0]
    rows += [dict(r, model=name) for r in budgets.accuracy_by_budget(
        model, params, val, budgets=(full, full // 2, full // 4), frames=8, resolution=112,
        batch_size=teacher.eval.batch_size, sharding=batch)]
  table = budgets.markdown_table(rows, name='model')
  print(f'\nsynthetic_motion validation, 8 x 112^2 (chance 16.7%):\n{table}')
  with open(os.path.join(root, 'umt_budgets.md'), 'w') as f:
    f.write(table + '\n')
  print(f'saved {root}/umt_budgets.md; wall time {time.perf_counter() - t0:.0f} s')


def run() -> None:
  _define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
