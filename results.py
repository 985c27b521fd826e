"""Mean +- std over seeds of every result.json under a results folder, as a markdown table.

    python results.py results/ucla_diffmae_decoder        # cells = folders holding seed*/result.json

Runs write into a folder that is not committed (`results/` is in .gitignore), one folder per cell and
one `seedN/` per seed, so a session that stops early loses nothing: this table is rebuilt from
whatever finished. Top-1 is the last epoch's; the best epoch's mean stands beside it.
"""
import argparse
import json
import os
import statistics
import sys


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('root', help='a folder of cells, each holding seed*/result.json')
    return parser.parse_args(argv)


def collect(root):
    """{cell: [result dicts]} for every cell/seed*/result.json under root, cells sorted by name."""
    cells = {}
    for folder, _, files in sorted(os.walk(root)):
        if 'result.json' in files and os.path.basename(folder).startswith('seed'):
            with open(os.path.join(folder, 'result.json')) as f:
                cells.setdefault(os.path.relpath(os.path.dirname(folder), root), []).append(json.load(f))
    return cells


def mean_std(values):
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(cells):
    lines = ['| cell | top-1 (%) last epoch, mean +- std | n | best epoch top-1, mean | epochs |', '|---|---|---|---|---|']
    for cell, results in sorted(cells.items()):
        mean, std = mean_std([r['top1'] for r in results])
        best, _ = mean_std([r['best_top1'] for r in results])
        lines.append(f'| {cell} | {mean:.1f} +- {std:.1f} | {len(results)} | {best:.1f} | {results[0]["epochs"]} |')
    return '\n'.join(lines) + '\n'


def main(args):
    if not os.path.isdir(args.root):
        sys.exit(f'results.py: {args.root}: not a folder (expected cells holding seed*/result.json)')
    cells = collect(args.root)
    if not cells:
        sys.exit(f'results.py: {args.root}: no seed*/result.json found')
    print(table(cells), end='')
    return cells


if __name__ == '__main__':
    main(get_args())
