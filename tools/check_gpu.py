"""One GPU, about eight minutes: do the scripts run at speed and learn at the paper's model size?

    python tools/check_gpu.py runs/check_gpu                  # one CUDA GPU, NW-UCLA from $S2I_DATA
    python tools/check_gpu.py /tmp/check --tiny --data synthetic  # the same steps on a CPU in about a minute

1. encode.py on the dataset (NW-UCLA by default: 1,484 sequences, joint stream, 224 x 224).
2. bench.py's loader and train figures for the paper's ViT-B/16 at 224, 64 images per GPU (Table 10's
   512 over 8 GPUs), bf16 on CUDA: MAE, DiffMAE and fine-tuning images/s, model-FLOPs utilisation and
   peak memory.
3. pretrain.py: DiffMAE from scratch (no ImageNet weights on a machine without internet) for as many
   epochs as --pretrain-minutes allow at the rate measured in step 1.
4. finetune.py from that encoder for as many epochs as --finetune-minutes allow (at most 100, Table 12).

Writes OUT/check.json (every figure), OUT/check.md (the table it also prints), and the logs and runs
of each step under OUT. The epoch counts are planned from bench.py's rates times --rate-margin, and
the warm-up keeps the paper's share of the epochs (40 of 1600 in Table 11, 10 of 100 in Table 12).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the stages, beside tools/
DATA = os.environ.get('S2I_DATA')                                      # the real datasets (docs/DATA.md)
sys.path.insert(0, ROOT)
from common import atomic_write  # noqa: E402  (the stages' one atomic write)


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('out', help='folder for check.json, check.md, logs and runs')
    group = parser.add_argument_group('data')
    group.add_argument('--data', default='ucla', help='any dataset encode.py reads (synthetic needs no --root)')
    group.add_argument('--root', default=DATA and os.path.join(DATA, 'nw_ucla', 'all_sqe'),
                       help='raw dataset folder for encode.py --root (default: $S2I_DATA/nw_ucla/all_sqe)')
    group = parser.add_argument_group('time budget')
    group.add_argument('--pretrain-minutes', type=float, default=3.0)
    group.add_argument('--finetune-minutes', type=float, default=1.5)
    group.add_argument('--rate-margin', type=float, default=0.7,
                       help='plan epochs at this fraction of the measured images/s (start-up, evaluation)')
    group.add_argument('--pretrain-epochs', type=int, default=None, help='fixed count instead of the plan')
    group.add_argument('--finetune-epochs', type=int, default=None, help='fixed count instead of the plan')
    group = parser.add_argument_group('model')
    group.add_argument('--model', default='vit_base_patch16', help='the paper\'s ViT-B/16 (4.2)')
    group.add_argument('--size', type=int, default=224)
    group.add_argument('--pretrain-batch', type=int, default=128,
                       help='global; 512 (Table 11) gives NW-UCLA two steps per epoch')
    group.add_argument('--finetune-batch', type=int, default=32, help='Table 12: 32 on NW-UCLA')
    group.add_argument('--compile', action='store_true',
                       help='torch.compile pretraining and fine-tuning (compile time comes out of the budget)')
    group.add_argument('--tiny', action='store_true',
                       help='CPU-sized: vit_test at 64 px, a 2-block decoder, a few steps (what the tests run)')
    args = parser.parse_args(argv)
    if args.tiny:
        args.model, args.size, args.pretrain_batch, args.finetune_batch = 'vit_test', 64, 64, 32
    if min(args.pretrain_minutes, args.finetune_minutes, args.rate_margin, args.pretrain_epochs or 1,
           args.finetune_epochs or 1) <= 0:
        parser.error('--pretrain-minutes, --finetune-minutes, --rate-margin and the epoch counts must be positive')
    if os.path.isdir(args.out) and os.listdir(args.out):
        sys.exit(f'check_gpu.py: {args.out} is not empty (a check writes its runs there: give a new folder)')
    if args.data != 'synthetic' and not args.root:
        parser.error(f'--root: the raw {args.data} folder is needed (or set S2I_DATA to the folder holding nw_ucla/)')
    args.out = os.path.abspath(args.out)     # the stages run from the project root
    return args


def run_step(name, command, out):
    """Run one stage with its output in OUT/{name}.log; stop with one line naming the log if it fails."""
    log_path = os.path.join(out, f'{name}.log')
    started = time.perf_counter()
    with open(log_path, 'w') as log:
        returncode = subprocess.run([sys.executable, *command], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - started
    if returncode:
        with open(log_path) as log:
            last = (log.read().strip().splitlines() or ['(no output)'])[-1]
        sys.exit(f'check_gpu.py: {name} failed (exit {returncode}): {last} (whole output in {log_path})')
    print(f'{name}: {seconds:.0f} s', flush=True)
    return seconds


def bench_records(log_path):
    with open(log_path) as f:
        return [json.loads(line) for line in f if line.startswith('{')]


def figure(records, name, **settings):
    """The value of the first bench record called `name` whose settings include `settings`."""
    for record in records:
        if record['name'] == name and all(record['settings'].get(k) == v for k, v in settings.items()):
            return record['value']
    sys.exit(f'check_gpu.py: bench.py did not report {name} for {settings}')


def plan_epochs(seconds, images_per_s, samples, most):
    """Whole epochs of `samples` images that fit in `seconds` at `images_per_s`, from 1 to `most`."""
    return max(1, min(most, math.floor(seconds * images_per_s / samples)))


def warmup_epochs(epochs, paper_warmup, paper_epochs):
    """The paper's warm-up share of a shorter schedule, at least one epoch."""
    return max(1, round(epochs * paper_warmup / paper_epochs))


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main(args):
    os.makedirs(args.out, exist_ok=True)
    data_root = os.path.join(args.out, 'data')
    small_decoder = ['--decoder-depth', '2', '--decoder-dim', '64', '--decoder-heads', '4'] if args.tiny else []
    run_flags = (['--device', 'cpu'] if args.tiny else []) + (['--compile'] if args.compile else [])
    if args.data == 'synthetic':   # its classes are sided (wave right / left arm): a true mirror would swap them
        run_flags += ['--flip', 'x-only']

    # 1. encode the dataset's joint stream (first: a wrong --root fails before the benchmark)
    encode = ['encode.py', '--data', args.data, '--out', data_root, '--size', str(args.size), '--modality', 'joint',
              '--quiet'] + ([] if args.data == 'synthetic' else ['--root', args.root])
    encode_seconds = run_step('encode', encode, args.out)
    protocol = sorted(os.listdir(os.path.join(data_root, args.data)))[0]
    with open(os.path.join(data_root, args.data, protocol, 'meta.json')) as f:
        meta = json.load(f)
    train_samples = meta['counts']['train']

    # 2. bench.py figures: loader, then MAE / DiffMAE / fine-tune steps of the model
    bench = ['tools/bench.py', '--only', 'loader,train', '--models', args.model, '--workdir', os.path.join(args.out, 'bench')]
    bench += ['--batch-size', '16', '--steps', '1', '--device', 'cpu'] if args.tiny else []
    bench_seconds = run_step('bench', bench, args.out)
    records = bench_records(os.path.join(args.out, 'bench.log'))

    # 3. DiffMAE pretraining from scratch, epochs planned from the real loop's rate
    pretrain_rate = figure(records, 'train_loop_images_per_s', model=args.model, method='diffmae')
    pretrain_epochs = args.pretrain_epochs or plan_epochs(60 * args.pretrain_minutes, pretrain_rate * args.rate_margin,
                                                          train_samples, 1600)
    pretrain_dir = os.path.join(args.out, 'pretrain')
    pretrain_seconds = run_step('pretrain', [
        'pretrain.py', '--data', args.data, '--data-root', data_root, '--model', args.model, '--method', 'diffmae',
        '--init', 'none', '--epochs', str(pretrain_epochs), '--warmup-epochs', str(warmup_epochs(pretrain_epochs, 40, 1600)),
        '--batch-size', str(args.pretrain_batch), '--print-every', '0', '--output-dir', pretrain_dir,
        '--save-every', str(pretrain_epochs), *small_decoder, *run_flags], args.out)
    pretrain_log = read_jsonl(os.path.join(pretrain_dir, 'log.jsonl'))

    # 4. fine-tuning from that encoder, epochs planned from the bare step's rate
    finetune_rate = figure(records, 'finetune_bare_step_images_per_s', model=args.model)
    finetune_epochs = args.finetune_epochs or plan_epochs(60 * args.finetune_minutes, finetune_rate * args.rate_margin,
                                                          train_samples, 100)
    finetune_dir = os.path.join(args.out, 'finetune')
    finetune_seconds = run_step('finetune', [
        'finetune.py', '--data', args.data, '--data-root', data_root, '--model', args.model,
        '--init', os.path.join(pretrain_dir, 'encoder.pth'), '--epochs', str(finetune_epochs),
        '--warmup-epochs', str(warmup_epochs(finetune_epochs, 10, 100)), '--batch-size', str(args.finetune_batch),
        '--eval-every', str(max(1, finetune_epochs // 5)), '--print-every', '1000', '--output-dir', finetune_dir,
        '--save-every', str(finetune_epochs), *run_flags], args.out)
    with open(os.path.join(finetune_dir, 'result.json')) as f:
        result = json.load(f)

    report = {
        'device': next((r['settings']['gpu'] for r in records if 'gpu' in r['settings']), 'cpu'),
        'bench': records, 'bench_seconds': bench_seconds,
        'encode': {'data': args.data, 'protocol': protocol, 'train': train_samples, 'test': meta['counts']['test'],
                   'size': args.size, 'seconds': encode_seconds},
        'pretrain': {'model': args.model, 'method': 'diffmae', 'epochs': pretrain_epochs, 'batch': args.pretrain_batch,
                     'planned_seconds': 60 * args.pretrain_minutes, 'seconds': pretrain_seconds,
                     'first_loss': pretrain_log[0]['loss'], 'last_loss': pretrain_log[-1]['loss'],
                     'images_per_s': float(np.median([r['images_per_s'] for r in pretrain_log]))},
        'finetune': {'epochs': finetune_epochs, 'batch': args.finetune_batch,
                     'planned_seconds': 60 * args.finetune_minutes, 'seconds': finetune_seconds,
                     'top1': result['top1'], 'best_top1': result['best_top1'], 'best_epoch': result['best_epoch'],
                     'chance': 100 / meta['num_classes']},
    }
    table = summary_table(report, args)
    atomic_write(os.path.join(args.out, 'check.json'), lambda f: f.write(json.dumps(report, indent=1)), 'w')
    atomic_write(os.path.join(args.out, 'check.md'), lambda f: f.write(table), 'w')
    print(table, end='')
    return report


def summary_table(report, args):
    """A markdown table of the figures a reviewer compares with the paper and with docs/PERFORMANCE.md."""
    rows = []
    for name, unit in [('loader_images_per_s_per_core', 'images/s'), ('augment_images_per_s', 'images/s'),
                       ('train_bare_step_images_per_s', 'images/s'), ('train_bare_step_mfu', ''),
                       ('train_bare_step_peak_memory_gb', 'GiB'), ('train_loop_efficiency', ''),
                       ('finetune_bare_step_images_per_s', 'images/s'), ('finetune_bare_step_mfu', ''),
                       ('finetune_bare_step_peak_memory_gb', 'GiB')]:
        for record in report['bench']:
            if record['name'] == name:
                settings = record['settings']
                which = settings.get('method') or ' '.join(filter(None, (settings.get('aug_space'), settings.get('flip'))))
                rows.append((f'{name} {which}'.strip(), f'{record["value"]:.4g} {unit}'.strip(),
                             f'{settings.get("model", "")} {settings.get("size", "")} px, batch {settings.get("batch")}'))
    encode, pretrain, finetune = report['encode'], report['pretrain'], report['finetune']
    rows += [
        ('encode', f'{encode["seconds"]:.1f} s', f'{args.data} {encode["protocol"]}: {encode["train"]} train + '
                                                 f'{encode["test"]} test, joint, {encode["size"]} px'),
        ('pretrain DiffMAE from scratch', f'{pretrain["seconds"]:.0f} s (planned {pretrain["planned_seconds"]:.0f})',
         f'{pretrain["epochs"]} epochs, batch {pretrain["batch"]}, {pretrain["images_per_s"]:.0f} images/s, '
         f'loss {pretrain["first_loss"]:.3f} -> {pretrain["last_loss"]:.3f}'),
        ('fine-tune', f'{finetune["seconds"]:.0f} s (planned {finetune["planned_seconds"]:.0f})',
         f'{finetune["epochs"]} epochs, batch {finetune["batch"]}'),
        ('fine-tune top-1', f'{finetune["top1"]:.1f} %', f'best {finetune["best_top1"]:.1f} at epoch '
                                                           f'{finetune["best_epoch"]}; chance {finetune["chance"]:.1f} %'),
    ]
    lines = [f'# check_gpu.py on {report["device"]}', '', '| figure | value | setting |', '|---|---|---|']
    lines += [f'| {a} | {b} | {c} |' for a, b, c in rows]
    return '\n'.join(lines) + '\n'


if __name__ == '__main__':
    main(get_args())
