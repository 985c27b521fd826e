"""Mean +- std over seeds of every result.json under a results folder, as a markdown table and a chart.

    python results.py results/s2i_cpu                                  # cells = folders holding seed*/result.json
    python results.py results/s2i_cpu --cells 't1_*' 't3_*' --chart results.png
    python results.py results/toyota --metric mean_class_accuracy          # Toyota Smarthome's metric
    python results.py results/s2i_cpu --signature --cells 'i23_pt_*'       # encoder_stats.py's snapshots

Runs write into a folder that is not committed (`results/` is in .gitignore), one folder per cell and
one `seedN/` per seed, so a session that stops early loses nothing: this table is rebuilt from
whatever finished. Top-1 (or --metric's value) is the last epoch's; the best epoch's top-1 mean stands
beside it, and the training loss of the last epoch (log.jsonl) after it. A seed folder may also hold
ensemble.py's output (named result.json): its fused score is read. --signature tabulates instead the
stats_eE.json files results.sh writes beside a pretraining run's encoder snapshots (the effective
ranks and residual norms of tools/encoder_stats.py, E = 0 for the random encoder) and the
reliance.json of its last checkpoint (tools/decoder_reliance.py). --chart draws one bar per cell (mean, +- std whisker, a dot per seed, the cell's chance level in
red), grouped by the cell name's prefix up to the first '_'.
"""
import argparse
import fnmatch
import json
import os
import statistics
import sys

from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # pictures.py, beside tools/
sys.path.insert(0, ROOT)
from pictures import font, nice_ticks, save_png, text_width  # noqa: E402  (Pillow only: a chart imports no torch)


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('root', help='a folder of cells, each holding seed*/result.json')
    parser.add_argument('--cells', nargs='+', default=['*'], help='only the cells matching these patterns, in this order')
    parser.add_argument('--chart', default=None, metavar='PNG', help='also draw the cells as a bar chart')
    parser.add_argument('--metric', default='top1', choices=['top1', 'mean_class_accuracy'],
                        help="mean_class_accuracy: the mean of the per-class top-1 (Toyota Smarthome's metric)")
    parser.add_argument('--title', default=None, help="the chart's title (default: names the metric)")
    parser.add_argument('--signature', action='store_true',
                        help='tabulate the encoder statistics (seed*/stats_eE.json) of pretraining cells instead')
    args = parser.parse_args(argv)
    args.title = args.title or f'{METRIC_NAMES[args.metric]} (%) per cell: mean, +- std, one dot per seed'
    return args


METRIC_NAMES = {'top1': 'top-1', 'mean_class_accuracy': 'mean class accuracy'}


def last_train_loss(folder):
    """The training loss of the last epoch in folder/log.jsonl, or None (an ensemble has no log)."""
    path = os.path.join(folder, 'log.jsonl')
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        lines = f.read().splitlines()
    return json.loads(lines[-1])['loss'] if lines else None


def read_result(path, metric='top1'):
    """(last-epoch value of the metric, best top-1 or None, epochs, chance %, last training loss or None) of
    a probe/finetune result.json or an ensemble's; None for a run that has not reached its last epoch
    (result.json is also written at earlier evaluations)."""
    with open(path) as f:
        result = json.load(f)
    scores = result['fused'] if 'fused' in result else result
    if metric not in scores:
        sys.exit(f'results.py: {path}: no {metric} (written before it was recorded: run ensemble.py again, or '
                 'probe.py / finetune.py --eval on the run)')
    if 'fused' in result:                     # ensemble.py: no epochs, no best
        value = scores[metric]
        return (value, value if metric == 'top1' else None, '-',
                100 / result['num_classes'] if 'num_classes' in result else None, None)
    if result['epoch'] != result['epochs'] - 1:
        return None
    num_classes = result.get('settings', {}).get('num_classes')
    return (result[metric], result['best_top1'] if metric == 'top1' else None, result['epochs'],
            100 / num_classes if num_classes else None, last_train_loss(os.path.dirname(path)))


def collect(root, patterns=('*',), metric='top1'):
    """{cell: [(top1, best, epochs, chance) per seed]} for cell/seed*/result.json under root (links followed),
    cells ordered by the first pattern they match, then by name."""
    cells, unfinished = {}, []
    for folder, _, files in sorted(os.walk(root, followlinks=True)):
        if 'result.json' in files and os.path.basename(folder).startswith('seed'):
            cell = os.path.relpath(os.path.dirname(folder), root)
            if any(fnmatch.fnmatch(cell, p) for p in patterns):
                result = read_result(os.path.join(folder, 'result.json'), metric)
                if result is None:
                    unfinished.append(os.path.relpath(folder, root))
                else:
                    cells.setdefault(cell, []).append(result)
    if unfinished:
        print(f'results.py: left out {len(unfinished)} runs still short of their last epoch: {" ".join(unfinished)}',
              file=sys.stderr)
    rank = lambda cell: (next(k for k, p in enumerate(patterns) if fnmatch.fnmatch(cell, p)), cell)
    return dict(sorted(cells.items(), key=lambda item: rank(item[0])))


def mean_std(values):
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(cells, metric='top1'):
    lines = [f'| cell | {METRIC_NAMES[metric]} (%) last epoch, mean +- std | n | per seed | best epoch top-1, mean | epochs '
             '| train loss, last epoch |', '|---|---|---|---|---|---|---|']
    for cell, runs in cells.items():
        mean, std = mean_std([r[0] for r in runs])
        best = f'{mean_std([r[1] for r in runs])[0]:.1f}' if None not in [r[1] for r in runs] else '-'
        loss = '{:.3f} +- {:.3f}'.format(*mean_std([r[4] for r in runs])) if None not in [r[4] for r in runs] else '-'
        seeds = ' '.join(f'{r[0]:.1f}' for r in runs)
        lines.append(f'| {cell} | {mean:.1f} +- {std:.1f} | {len(runs)} | {seeds} | {best} | {runs[0][2]} | {loss} |')
    return '\n'.join(lines) + '\n'


# Chart headings for the groups of results.sh (a cell's name up to the first '_'); others print as they are.
GROUP_TITLES = {
    't1': 'Table 1: no pretraining vs MAE vs DiffMAE (NW-UCLA)',
    't2': 'Table 2: masking strategies, linear probe (NW-UCLA)',
    't3': 'Table 3: joint, bone, motion streams and their ensemble (NW-UCLA)',
    't6': 'Table 6: 10% of the labels (NW-UCLA)',
    't8': 'Table 8: cross-format, MSR Action3D <-> NW-UCLA',
    't9': 'Table 9: universal pretraining on both datasets',
    'ab': 'ablations: the readings the paper leaves open (NW-UCLA)',
    'in': 'investigation: 100 pretraining epochs (e100), DiffMAE rho 0.6 (NW-UCLA)',
    'flip': 'the skeleton flip: true mirror vs x negated alone, fine-tuning from scratch (msr: MSR Action3D)',
}


def draw_chart(cells, path, title, metric='top1'):
    """Horizontal bars, one row per cell, a gap and a heading between groups (the name up to '_')."""
    rows, group = [], None
    for cell, runs in cells.items():
        if cell.split('_')[0] != group:
            group = cell.split('_')[0]
            rows.append(('group', group))
        rows.append(('cell', cell))
    label_width = max(text_width(cell, font(12)) for cell in cells) + 16
    pitch, top, plot_width = 20, 56, 520
    width, height = int(label_width + plot_width + 90), top + pitch * len(rows) + 46
    image = Image.new('RGB', (width, height), 'white')
    draw = ImageDraw.Draw(image)
    x0, x1 = label_width, label_width + plot_width
    x_of = lambda value: x0 + value / 100 * (x1 - x0)
    draw.text((10, 10), title, fill='black', font=font(15))
    draw.text((10, 32), 'bar: mean over seeds; black whisker: +- std; grey dots: seeds; red tick: chance (100 / classes)',
              fill=(90, 90, 90), font=font(11))
    bottom = top + pitch * len(rows)
    for tick in nice_ticks(0, 100, 10):
        draw.line([x_of(tick), top, x_of(tick), bottom], fill=(225, 225, 225))
        draw.text((x_of(tick), bottom + 6), f'{tick:g}', fill='black', font=font(11), anchor='mt')
    draw.text(((x0 + x1) / 2, bottom + 24), f'{METRIC_NAMES[metric]} (%), last epoch', fill='black', font=font(12),
              anchor='mt')
    for k, (kind, name) in enumerate(rows):
        y = top + k * pitch + pitch / 2
        if kind == 'group':
            draw.text((10, y), GROUP_TITLES.get(name, name), fill='black', font=font(13), anchor='lm')
            continue
        runs = cells[name]
        mean, std = mean_std([r[0] for r in runs])
        draw.text((x0 - 8, y), name, fill='black', font=font(12), anchor='rm')
        draw.rectangle([x0, y - 6, x_of(mean), y + 6], fill=(120, 160, 210))
        draw.line([x_of(mean - std), y, x_of(mean + std), y], fill='black', width=2)
        for r in runs:
            draw.ellipse([x_of(r[0]) - 2.5, y - 2.5, x_of(r[0]) + 2.5, y + 2.5], fill=(80, 80, 80))
        if runs[0][3] is not None:
            draw.line([x_of(runs[0][3]), y - 8, x_of(runs[0][3]), y + 8], fill=(200, 40, 40), width=2)
        draw.text((x1 + 8, y), f'{mean:.1f} +- {std:.1f} (n={len(runs)})', fill='black', font=font(11), anchor='lm')
    draw.line([x0, top, x0, bottom], fill='black')
    save_png(image, path)


def signature_table(root, patterns=('*',)):
    """Mean +- std over seeds of each pretraining cell's encoder statistics at each snapshot epoch, then
    the residual norm after every block (means over seeds)."""
    stats, reliance = {}, {}                           # (cell, epoch) -> [stats per seed]; cell -> [rows per seed]
    for folder, _, files in sorted(os.walk(root, followlinks=True)):
        cell = os.path.relpath(os.path.dirname(folder), root)
        if not os.path.basename(folder).startswith('seed') or not any(fnmatch.fnmatch(cell, p) for p in patterns):
            continue
        for name in files:
            if name.startswith('stats_e') and name.endswith('.json'):
                with open(os.path.join(folder, name)) as f:
                    stats.setdefault((cell, int(name[7:-5])), []).append(json.load(f))
        if 'reliance.json' in files:
            with open(os.path.join(folder, 'reliance.json')) as f:
                reliance.setdefault(cell, []).append(json.load(f)['rows'])
    if not stats:
        sys.exit(f'results.py: {root}: no seed*/stats_e*.json found in cells matching {" ".join(patterns)}')
    rank = lambda key: (next(k for k, p in enumerate(patterns) if fnmatch.fnmatch(key[0], p)), key)
    keys = sorted(stats, key=rank)
    lines = ['| cell | epoch | n | class-token rank | mean-patch rank | residual norm, last block |', '|---|---|---|---|---|---|']
    for cell, epoch in keys:
        runs = stats[cell, epoch]
        cols = [mean_std([run[k] for run in runs]) for k in ('rank_cls', 'rank_mean_patch')]
        cols.append(mean_std([run['residual_norm_per_block'][-1] for run in runs]))
        lines.append(f'| {cell} | {epoch} | {len(runs)} | ' + ' | '.join(f'{m:.1f} +- {s:.1f}' for m, s in cols) + ' |')
    depth = len(stats[keys[0]][0]['residual_norm_per_block'])
    lines += ['', '| cell | epoch | ' + ' | '.join(f'block {b + 1}' for b in range(depth)) + ' |', '|---|---|' + '---|' * depth]
    for cell, epoch in keys:
        norms = [statistics.fmean(block) for block in zip(*(run['residual_norm_per_block'] for run in stats[cell, epoch]))]
        lines.append(f'| {cell} | {epoch} | ' + ' | '.join(f'{n:.1f}' for n in norms) + ' |')
    if reliance:
        lines += ['', '| cell | t | n | loss, own encoder tokens | loss, another image\'s | encoder share of the error |',
                  '|---|---|---|---|---|---|']
    for cell in sorted(reliance, key=lambda cell: rank((cell, 0))):
        if len({tuple(row['t'] for row in rows) for rows in reliance[cell]}) > 1:
            sys.exit(f'results.py: {root}/{cell}: its seeds measured reliance at different timesteps; '
                     'run tools/decoder_reliance.py on them with the same --timesteps')
        for rows in zip(*reliance[cell]):                 # the same timestep in every seed
            cols = [mean_std([row[k] for row in rows]) for k in ('own', 'other', 'encoder_share')]
            t = '-' if rows[0]['t'] is None else rows[0]['t']
            lines.append(f'| {cell} | {t} | {len(rows)} | ' + ' | '.join(f'{m:.3f} +- {s:.3f}' for m, s in cols) + ' |')
    return '\n'.join(lines) + '\n'


def main(args):
    if not os.path.isdir(args.root):
        sys.exit(f'results.py: {args.root}: not a folder (expected cells holding seed*/result.json)')
    if args.signature:
        print(signature_table(args.root, args.cells), end='')
        return None
    cells = collect(args.root, args.cells, args.metric)
    if not cells:
        sys.exit(f'results.py: {args.root}: no seed*/result.json found in cells matching {" ".join(args.cells)}')
    print(table(cells, args.metric), end='')
    if args.chart:
        draw_chart(cells, args.chart, args.title, args.metric)
    return cells


if __name__ == '__main__':
    main(get_args())
