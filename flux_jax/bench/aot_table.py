r"""The README's memory table: `bench aot` over the cells that answer two questions, does
the official per-chip batch fit (16 clips: 8 videos x num_sample 2, SPEC C.6), and what
is the largest that does.

  python -m flux_jax.bench.aot_table --out workdir/aot.jsonl [--only s_multi_v5e]
  python -m flux_jax.bench.aot_table --out workdir/aot.jsonl --print   # the table only

Every compile is a subprocess `python -m flux_jax.bench aot ... --json` (about 10 minutes
for FluxViT-S on 2 CPU cores); its report is appended to --out, and a compile already
there is not repeated, so a stopped run resumes. For a cell marked `search`, the largest
batch is found from the peak at 16 and at a second batch (32, or 8 when 16 does not fit),
extrapolated linearly to the chip's HBM and then compiled to confirm: a lower bound
when it fits (libtpu rematerializes more as memory gets tight, so peaks are not linear
in the batch near the HBM size).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from typing import NamedTuple

from absl import app
from absl import flags

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line's flags, defined when run as a program: importing the module
  adds no global flag."""
  flags.DEFINE_string('out', 'workdir/aot.jsonl', 'JSON lines of bench aot reports.')
  flags.DEFINE_list('only', None, 'Cells to run (names); default: all.')
  flags.DEFINE_bool('print', False, 'Print the table from --out, compile nothing.')
  flags.DEFINE_integer('timeout', 7200, 'Seconds allowed per compile.')
  flags.DEFINE_bool('search', True, 'Search the largest batch for the cells marked '
                    'so; --nosearch compiles every cell at 16 only (a first pass).')

K400 = 'configs/fluxvit_k400.py:variant={variant},mode={mode}'
UMT = 'configs/umt_fluxvit_s_from_b.py'
UMT_IV2 = 'configs/umt_fluxvit_s_from_iv2_1b.py'
OFFICIAL_BATCH = 16


class Cell(NamedTuple):
  name: str
  config: str
  topology: str
  attention: str = 'splash'
  remat: str = 'full'
  search: bool = False  # find the largest per-chip batch that fits
  teacher: str = ''  # Flux-UMT: the frozen teacher, for the table
  overrides: tuple[str, ...] = ()  # more --config.KEY=VALUE flags


# One compile is 10-20 minutes for FluxViT-S on 2 cores: the cells answer the question
# (does 16 fit, what is the largest that does) for the released recipe on v5e, and show
# what each choice (attention, remat, mode, model, chip) changes at 16.
CELLS = (
    Cell('s_multi_v5e', K400.format(variant='small', mode='multi'), 'v5e:2x4', search=True),
    Cell('s_multi_v5e_xla', K400.format(variant='small', mode='multi'), 'v5e:2x4', 'xla'),
    Cell('s_single_v5e', K400.format(variant='small', mode='single'), 'v5e:2x4'),
    Cell('s_umt_v5e', UMT, 'v5e:2x4', teacher='FluxViT-B'),
    Cell('b_multi_v5e', K400.format(variant='base', mode='multi'), 'v5e:2x4', search=True),
    Cell('s_multi_v5p', K400.format(variant='small', mode='multi'), 'v5p:2x2x1'),
    Cell('b_multi_v5p', K400.format(variant='base', mode='multi'), 'v5p:2x2x1'),
    Cell('s_multi_v6e', K400.format(variant='small', mode='multi'), 'v6e:2x4'),
    Cell('iv2_umt_v5e', UMT_IV2, 'v5e:2x4', search=True, teacher='InternVideo2-1B'),
    Cell('iv2_umt_v5p', UMT_IV2, 'v5p:2x2x1', teacher='InternVideo2-1B'),
    # ZeRO-3 over the 8 chips (mesh fsdp=8): the 1B teacher's weights are split, not copied.
    Cell('iv2_umt_v5e_fsdp', UMT_IV2, 'v5e:2x4', teacher='InternVideo2-1B',
         overrides=('--config.mesh.data=1', '--config.mesh.fsdp=-1')),
    Cell('s_multi_v5e_dots', K400.format(variant='small', mode='multi'), 'v5e:2x4',
         remat='dots_with_no_batch_dims_saveable'),
    Cell('s_multi_v5e_none', K400.format(variant='small', mode='multi'), 'v5e:2x4',
         remat='none'),
)


def command(cell: Cell, batch: int) -> list[str]:
  return [sys.executable, '-m', 'flux_jax.bench', 'aot', '--config', cell.config,
          f'--config.model.attention={cell.attention}', f'--config.model.remat={cell.remat}',
          *cell.overrides, '--topology', cell.topology, '--batch_per_chip', str(batch),
          '--json']


def load(path: str) -> dict[tuple[str, int], dict]:
  """{(cell name, batch per chip): report} from the JSON lines at `path`."""
  out = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        row = json.loads(line)
        out[(row['cell'], int(row['batch_per_chip']))] = row
  return out


def compile_cell(cell: Cell, batch: int, path: str, done: dict) -> dict:
  if (cell.name, batch) in done:
    return done[(cell.name, batch)]
  print(f'[aot_table] {cell.name} at {batch} clips per chip: {" ".join(command(cell, batch))}',
        flush=True)
  proc = subprocess.run(command(cell, batch), capture_output=True, text=True,
                        timeout=FLAGS.timeout, check=False)
  if proc.returncode:
    raise RuntimeError(f'{cell.name} at {batch}: bench aot failed:\n{proc.stderr[-3000:]}')
  row = dict(json.loads(proc.stdout.strip().splitlines()[-1]), cell=cell.name)
  with open(path, 'a') as f:
    f.write(json.dumps(row) + '\n')
  done[(cell.name, batch)] = row
  print(f'[aot_table] {cell.name} at {batch}: peak {row["peak_bytes_per_chip"] / 2**30:.2f} '
        f'GiB, fits {row["fits"]}, {row["compile_s"]:.0f} s', flush=True)
  return row


def largest(cell: Cell, path: str, done: dict) -> int | None:
  """The largest per-chip batch that fits, from two compiles and a confirming one."""
  first = compile_cell(cell, OFFICIAL_BATCH, path, done)
  other = 2 * OFFICIAL_BATCH if first['fits'] else OFFICIAL_BATCH // 2
  second = compile_cell(cell, other, path, done)
  slope = (second['peak_bytes_per_chip'] - first['peak_bytes_per_chip']) / (
      other - OFFICIAL_BATCH)
  if slope <= 0:
    return None
  hbm = first['hbm_bytes_per_chip']
  guess = OFFICIAL_BATCH + math.floor((hbm - first['peak_bytes_per_chip']) / slope)
  while guess >= 1:
    if compile_cell(cell, guess, path, done)['fits']:
      return guess
    guess -= max(1, guess // 16)
  return 0


def _sharded(mesh: dict) -> str:
  """', fsdp 8' for a mesh that shards weights; '' for a data-parallel one."""
  return ''.join(f', {axis} {mesh[axis]}' for axis in ('fsdp', 'tensor') if mesh[axis] > 1)


def table(rows: dict[tuple[str, int], dict]) -> str:
  lines = ['| cell | model, mode | topology | attention | remat | peak GiB/chip at 16 | HBM '
           'GiB | fits | largest batch/chip found to fit (peak GiB) | TFLOP/chip-step at 16 | '
           'compile s |', '|' + '---|' * 11]
  for cell in CELLS:
    r = rows.get((cell.name, OFFICIAL_BATCH))
    if r is None:
      continue
    compiled = {b: x for (name, b), x in rows.items() if name == cell.name}
    best = max(((b, x) for b, x in compiled.items() if x['fits']), default=None)
    best_text = ('-' if not cell.search else 'not searched yet' if len(compiled) == 1 else
                 'none' if best is None else
                 f"{best[0]} ({best[1]['peak_bytes_per_chip'] / 2**30:.1f})")
    flops = r['flops_per_chip']
    lines.append(
        f"| {cell.name} | {r['model']}, {r['mode']} {'/'.join(map(str, r['budgets']))}"
        f"{f' from {cell.teacher}' if cell.teacher else ''} | "
        f"{r['topology']} ({r['device_kind']}){_sharded(r['mesh'])} | "
        f"{r['attention_runs']} | {r['remat']} | "
        f"{r['peak_bytes_per_chip'] / 2**30:.2f} | {r['hbm_bytes_per_chip'] / 2**30:.0f} | "
        f"{'yes' if r['fits'] else 'NO'} | {best_text} | "
        f"{'n/a' if flops is None else f'{flops / 1e12:.1f}'} | {r['compile_s']:.0f} |")
  return '\n'.join(lines)


def main(argv):
  del argv
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  done = load(FLAGS.out)
  if not FLAGS.print:
    for cell in CELLS:
      if FLAGS.only and cell.name not in FLAGS.only:
        continue
      try:
        if cell.search and FLAGS.search:
          largest(cell, FLAGS.out, done)
        else:
          compile_cell(cell, OFFICIAL_BATCH, FLAGS.out, done)
      except (RuntimeError, subprocess.TimeoutExpired) as e:  # the other cells still run
        print(f'[aot_table] {cell.name}: {e}', flush=True)
  print(table(done))


def run() -> None:
  _define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
