"""Measured speed and memory figures, one JSON line each: {name, value, unit, settings}.

Every ratio is taken within one run (a figure and its reference side by side), so it holds on a
noisy machine. `python tools/bench.py` runs all on CPU in a few minutes; `--only encode,loader` picks.

  encode    NTU .skeleton files parsed + encoded per second, median of --encode-runs (files written here,
            ~290 KB, 90 frames, a fifth with two bodies), and peak resident memory of the whole
            encode at two split sizes; --baseline-encode times another encode.py beside it
  loader    S2I images per second from the encoded memmap to a ready batch (per loader process),
            then augmentation + normalisation per second on the device
  train     pretrain.py's real loop vs a bare forward+backward+step on a preloaded batch
            (train_loop_efficiency), vit_test and ViT-B, and a bare fine-tuning step (finetune.py's
            model: class-token head, drop path 0.1); on CUDA also bf16 model FLOPs utilisation and
            peak memory
  probe     linear-probe wall time with and without --cache-features
  ddp       pretraining throughput with 1 vs 2 processes (NCCL with 2+ GPUs, else gloo on the CPU)
"""
import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the stages, beside tools/
sys.path.insert(0, ROOT)
import common  # noqa: E402
import finetune  # noqa: E402
import pretrain  # noqa: E402
import probe  # noqa: E402


def get_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--only', default='encode,loader,train,probe,ddp',
                        help='comma-separated figure groups; memory (ViT-B step memory on the CPU) is opt-in')
    parser.add_argument('--workdir', default=None, help='scratch directory (default: a temporary one)')
    parser.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'])
    group = parser.add_argument_group('encode')
    group.add_argument('--files', type=int, default=3000, help='.skeleton files for the throughput figure')
    group.add_argument('--memory-sizes', default='5000,20000', help='split sizes for the peak-memory figure')
    group.add_argument('--workers', type=int, default=os.cpu_count(), help='encode.py --workers')
    group.add_argument('--encode-runs', type=int, default=3, help='timed encode runs per script (the median is reported)')
    group.add_argument('--baseline-encode', default=None,
                       help="another encode.py (with its joints.yaml beside it, e.g. main's) timed in the same "
                            'run on the same files, its runs interleaved with this one\'s')
    group = parser.add_argument_group('training')
    group.add_argument('--batch-size', type=int, default=None, help='per device, every model (default: ViT-B 64 on CUDA, 8 on CPU; vit_test 256 / 64)')
    group.add_argument('--steps', type=int, default=None, help='timed steps (default 20 on CUDA, 3 on CPU)')
    group.add_argument('--models', default='vit_test,vit_base_patch16',
                       help='train group: vit_test runs at 64 px, any other model at 224')
    return parser.parse_args()


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def report(name, value, unit, **settings):
    print(json.dumps({'name': name, 'value': round(value, 4) if isinstance(value, float) else value,
                      'unit': unit, 'settings': settings}), flush=True)


# ----------------------------------------------------------------------------------------------
# encode: realistic NTU files, throughput, and the resident memory of the whole process tree

def ntu_file_text(rng, frames=90, bodies=1):
    """One .skeleton file in the official layout with Kinect-like magnitudes (7-8 significant digits)."""
    lines = [str(frames)]
    walk = np.cumsum(rng.normal(0, 0.01, (frames, bodies, 25, 12)), axis=0)
    base = np.array([0.2, 0.2, 3.5, 270, 200, 1000, 500, -0.2, 0.05, 0.97, -0.1, 2])
    for t in range(frames):
        lines.append(str(bodies))
        for b in range(bodies):
            lines.append(f'{72057594037931101 + b} 0 1 1 1 1 0 0.02336578 0.1314651 2')
            lines.append('25')
            values = base + walk[t, b] * np.abs(base).clip(0.1)
            lines.append('\n'.join(' '.join(f'{v:.7g}' for v in row[:11]) + ' 2' for row in values))
    return '\n'.join(lines) + '\n'


def ntu_name(k):
    """A distinct NTU sample name for every k (setup, camera, performer, replication, action)."""
    k, action = divmod(k, 120)
    k, performer = divmod(k, 106)
    setup, camera = divmod(k, 3)
    return f'S{1 + setup:03d}C{1 + camera:03d}P{1 + performer:03d}R001A{1 + action:03d}'


def write_ntu_files(root, count, unique=60):
    """count files named like NTU samples; `unique` distinct texts, the rest copies (parse cost is the same)."""
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(0)
    texts = [ntu_file_text(rng, bodies=2 if k % 5 == 0 else 1) for k in range(unique)]
    for k in range(count):
        with open(os.path.join(root, ntu_name(k) + '.skeleton'), 'w') as f:
            f.write(texts[k % unique])
    return sum(len(t) for t in texts) / unique


def tree_rss(pid):
    """Resident memory (bytes) of a process and all its descendants, from /proc."""
    children = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as f:
                    parent = int(f.read().rsplit(')', 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        stack.extend(children.get(p, []))
        try:
            with open(f'/proc/{p}/status') as f:
                total += next(int(line.split()[1]) for line in f if line.startswith('VmRSS')) * 1024
        except (OSError, StopIteration):
            continue
    return total


def run_measured(command, cwd=ROOT, sample_memory=True):
    """Run a command; return (seconds, peak resident bytes of its process tree, output). Sampling
    walks /proc every 50 ms, which costs CPU: leave it off when timing."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, done = 0, threading.Event()

    def sample():
        nonlocal peak
        while sample_memory and not done.is_set():
            peak = max(peak, tree_rss(process.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    output = process.communicate()[0]
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if process.returncode:
        sys.exit(f'bench.py: {" ".join(command)} failed:\n{output[-2000:]}')
    return seconds, peak, output


def bench_encode(args, workdir, device):
    root = os.path.join(workdir, 'ntu_raw')
    started = time.perf_counter()
    mean_bytes = write_ntu_files(root, args.files)
    os.sync()                               # a dataset at rest: no write-back of the fixtures during the timing
    report('encode_fixture_files', args.files, 'files', mean_kb=round(mean_bytes / 1024), frames=90,
           two_body_share=0.2, seconds_to_write=round(time.perf_counter() - started, 1))
    out = os.path.join(workdir, 'encoded')
    scripts = {'encode': 'encode.py'}
    if args.baseline_encode:                # a copy, so that it reads its own joints.yaml
        baseline = os.path.join(workdir, 'baseline')
        os.makedirs(baseline)
        for name in ('encode.py', 'joints.yaml'):
            shutil.copy(os.path.join(os.path.dirname(os.path.abspath(args.baseline_encode)), name), baseline)
        scripts['encode_baseline'] = os.path.join(baseline, 'encode.py')
    runs = {key: [] for key in scripts}
    for _ in range(args.encode_runs):       # the median: one run on this shared machine can be 30% off
        for key, script in scripts.items():
            shutil.rmtree(out, ignore_errors=True)
            command = [sys.executable, script, '--data', 'ntu120', '--root', root, '--out', out,
                       '--modality', 'joint', '--workers', str(args.workers), '--quiet']
            runs[key].append(run_measured(command, sample_memory=False)[0])
    for key, script in scripts.items():
        seconds = float(np.median(runs[key]))
        report(f'{key}_files_per_s', args.files / seconds, 'files/s', files=args.files, seconds=round(seconds, 2),
               runs_s=[round(r, 2) for r in runs[key]], workers=args.workers, modality='joint', size=224,
               script=script)
    started = time.perf_counter()
    for name in os.listdir(root):
        with open(os.path.join(root, name), 'rb') as f:
            f.read()
    image_bytes = np.zeros(3 * 224 * 224, np.float16).tobytes()
    with open(os.path.join(workdir, 'floor.bin'), 'wb') as f:
        for _ in range(args.files):
            f.write(image_bytes)
        f.flush()
        os.fsync(f.fileno())
    os.remove(os.path.join(workdir, 'floor.bin'))
    report('encode_read_write_floor_s', time.perf_counter() - started, 's', files=args.files,
           note='read every file and write the same output bytes, no parsing')
    shutil.rmtree(out)
    # peak memory must not grow with N: the same files linked under more names
    names = sorted(os.listdir(root))
    for size in [int(s) for s in args.memory_sizes.split(',')]:
        linked = os.path.join(workdir, f'ntu_{size}')
        os.makedirs(linked)
        for k in range(size):
            os.symlink(os.path.join(root, names[k % len(names)]), os.path.join(linked, ntu_name(k) + '.skeleton'))
        seconds, peak, _ = run_measured([sys.executable, 'encode.py', '--data', 'ntu120', '--root', linked,
                                         '--out', out, '--modality', 'joint', '--workers', str(args.workers),
                                         '--quiet'])
        report('encode_peak_rss_mb', peak / 2 ** 20, 'MB', sequences=size, seconds=round(seconds, 1),
               workers=args.workers, note='whole process tree, sampled every 50 ms')
        shutil.rmtree(out)
        shutil.rmtree(linked)


# ----------------------------------------------------------------------------------------------
# loader: memmap -> batch -> augmentation, per core

def bench_loader(args, workdir, device):
    out = os.path.join(workdir, 'synthetic')
    subprocess.run([sys.executable, 'encode.py', '--data', 'synthetic', '--out', out, '--modality', 'joint',
                    '--synthetic-train', '150', '--quiet'], cwd=ROOT, check=True)
    protocol = common.resolve_protocol(out, 'synthetic', None)
    meta = common.load_meta(out, 'synthetic', protocol)
    path, labels, _ = common.read_split(out, 'synthetic', protocol, 'train', 'joint')
    dataset = common.S2IDataset([path], [labels])
    mean, std = common.channel_stats(meta, 'joint', device)
    augment_args = argparse.Namespace(aug_space='skeleton', flip='mirror', flip_prob=0.5, rotate=15.0, scale=0.1,
                                      translate=0.1, noise_std=0.01)
    torch.set_num_threads(1)
    loader, sampler = common.make_loader(dataset, 64, True, 0, 0, torch.device('cpu'))
    images_seen, started = 0, time.perf_counter()
    for epoch in range(3):                                     # memmap -> float16 batch, what a worker does
        sampler.set_epoch(epoch)
        for batch in loader:
            images_seen += batch[0].shape[0]
    report('loader_images_per_s_per_core', images_seen / (time.perf_counter() - started), 'images/s', batch=64,
           size=meta['size'], source='page cache', note='memmap read to a ready float16 batch, one process')
    batch = next(iter(loader))
    for space, flip in (('skeleton', 'mirror'), ('skeleton', 'x-only'), ('image', 'mirror')):  # on the device
        augment_args.aug_space, augment_args.flip = space, flip
        geometry = common.skeleton_geometry([meta], augment_args, device)
        common.prepare_batch(batch, device, mean, std, 'joint', augment_args, geometry, train=True)
        synchronize(device)
        started = time.perf_counter()
        for _ in range(10):
            common.prepare_batch(batch, device, mean, std, 'joint', augment_args, geometry, train=True)
        synchronize(device)
        report('augment_images_per_s', 640 / (time.perf_counter() - started), 'images/s', aug_space=space,
               flip=flip if space == 'skeleton' else 'columns reversed', batch=64, size=meta['size'],
               device=device.type, threads=torch.get_num_threads())
    torch.set_num_threads(os.cpu_count())


# ----------------------------------------------------------------------------------------------
# train: pretrain.py's real loop against a bare step on a preloaded batch

def encode_synthetic(workdir, size, per_class):
    out = os.path.join(workdir, f'synthetic_{size}_{per_class}')
    if not os.path.isdir(out):
        subprocess.run([sys.executable, 'encode.py', '--data', 'synthetic', '--out', out, '--size', str(size),
                        '--synthetic-train', str(per_class), '--synthetic-test', '1', '--quiet'], cwd=ROOT, check=True)
    return out


def pretrain_args(data_root, model, method, batch, epochs, out_dir, device, extra=()):
    return ['--data', 'synthetic', '--data-root', data_root, '--model', model, '--method', method, '--init', 'none',
            '--batch-size', str(batch), '--epochs', str(epochs), '--warmup-epochs', '1', '--num-workers', '2',
            '--output-dir', out_dir, '--device', device, '--print-every', '0', '--save-every', '1000', *extra]


def last_epoch_rate(out_dir):
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        return json.loads(f.read().splitlines()[-1])['images_per_s']


def model_flops_per_image(model, batch, device):
    """Forward+backward FLOPs of one pretraining step per image (torch's FLOP counter, matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        model(*batch).backward()
    return counter.get_total_flops() / batch[0].shape[0]


def reset_peak_memory(device):
    if device.type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)            # this model's peak, not the previous one's


def peak_memory_gb(device):
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == 'cuda' else None


def timed_rate(step, steps, batch_size, device):
    """Images/s of `steps` calls of step() after one warm-up call."""
    step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return steps * batch_size / (time.perf_counter() - started)


def bare_step_rate(args_list, steps, device):
    """Images/s of forward + backward + AdamW step on one batch already on the device."""
    reset_peak_memory(device)
    args = pretrain.get_args(args_list)
    protocol = common.resolve_protocol(args.data_root, 'synthetic', None)
    meta = common.load_meta(args.data_root, 'synthetic', protocol)
    model = pretrain.build_model(args, meta['size']).to(device)
    optimizer = torch.optim.AdamW(common.param_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95),
                                  fused=device.type == 'cuda')
    path, labels, _ = common.read_split(args.data_root, 'synthetic', protocol, 'train', 'joint')
    images = torch.from_numpy(np.load(path)[:args.batch_size]).float().to(device)
    mask = pretrain.make_masks('random', len(images), model.grid, 0.75, slice(None), device)
    ids_keep, ids_masked = pretrain.split_ids(mask, pretrain.num_masked('random', model.grid, 0.75))
    t = torch.randint(0, 1000, (len(images),), device=device)
    noise = torch.randn(ids_masked.shape + (model.patch ** 2 * 3,), device=device)
    batch = (images, ids_keep, ids_masked, t, noise)
    autocast = torch.autocast('cuda', dtype=torch.bfloat16, enabled=device.type == 'cuda')

    def step():
        with autocast:
            loss = model(*batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    rate = timed_rate(step, steps, len(images), device)
    with autocast:
        flops = model_flops_per_image(model, batch, device)
    return rate, flops, peak_memory_gb(device)


def finetune_step_rate(model_name, size, batch_size, steps, device, num_classes=60):
    """Images/s of finetune.py's model (defaults: class-token linear head, drop path 0.1) doing
    forward + cross-entropy + backward + AdamW step on one batch already on the device."""
    reset_peak_memory(device)
    args = finetune.get_args(['--model', model_name, '--init', 'none'])
    model = finetune.build_model(args, size, num_classes).to(device)
    optimizer = torch.optim.AdamW(common.param_groups(model, 0.05), lr=1e-3, fused=device.type == 'cuda')
    images = torch.randn(batch_size, 3, size, size, device=device)                 # (N, 3, S, S)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)
    autocast = torch.autocast('cuda', dtype=torch.bfloat16, enabled=device.type == 'cuda')

    def loss_of(images, labels):
        with autocast:
            return torch.nn.functional.cross_entropy(model(images), labels)

    def step():
        loss_of(images, labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    rate = timed_rate(step, steps, batch_size, device)
    flops = model_flops_per_image(loss_of, (images, labels), device)
    return rate, flops, peak_memory_gb(device)


def report_step(prefix, rate, flops, memory, device, /, **settings):
    """images/s and GFLOP of one step; on CUDA also bf16 model-FLOPs utilisation and peak memory."""
    report(f'{prefix}_images_per_s', rate, 'images/s', **settings)
    report(f'{prefix}_gflops_per_image', flops / 1e9, 'GFLOP', **settings)
    if device.type == 'cuda':
        peak = {'H100 PCIe': 756e12, 'H100 NVL': 835e12, 'H100': 989e12, 'H200': 989e12, 'A100': 312e12}
        name = torch.cuda.get_device_name(device)                     # dense bf16 peaks; the first match wins
        peak_flops = next((v for k, v in peak.items() if k in name), None)
        if peak_flops:
            report(f'{prefix}_mfu', rate * flops / peak_flops, 'fraction', gpu=name, peak_tflops=peak_flops / 1e12,
                   **settings)
        report(f'{prefix}_peak_memory_gb', memory, 'GiB', gpu=name, **settings)


def bench_train(args, workdir, device):
    cuda = device.type == 'cuda'
    batch = args.batch_size or (64 if cuda else 8)
    steps = args.steps or (20 if cuda else 3)
    test_batch = args.batch_size or (256 if cuda else 64)
    settings = [('vit_test', 64, test_batch, steps * 4) if model == 'vit_test' else (model, 224, batch, steps)
                for model in args.models.split(',')]
    for model, size, model_batch, model_steps in settings:
        per_class = max(1, -(-model_batch * model_steps // 6))  # one epoch = `model_steps` steps (6 classes)
        data_root = encode_synthetic(workdir, size, per_class)
        step_settings = dict(model=model, size=size, batch=model_batch, device=device.type,
                             threads=torch.get_num_threads(), bf16=cuda)
        for method in ('mae', 'diffmae'):
            out_dir = os.path.join(workdir, f'train_{model}_{method}')
            args_list = pretrain_args(data_root, model, method, model_batch, 2, out_dir, device.type)
            subprocess.run([sys.executable, 'pretrain.py', *args_list], cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL)
            loop = last_epoch_rate(out_dir)                    # epoch 2: loader warm, no start-up
            bare, flops, memory = bare_step_rate(args_list, model_steps, device)
            report('train_loop_images_per_s', loop, 'images/s', method=method, **step_settings)
            report('train_loop_efficiency', loop / bare, 'ratio', method=method, **step_settings)
            report_step('train_bare_step', bare, flops, memory, device, method=method, **step_settings)
            shutil.rmtree(out_dir)
        rate, flops, memory = finetune_step_rate(model, size, model_batch, model_steps, device)
        report_step('finetune_bare_step', rate, flops, memory, device, method='finetune', **step_settings)


def step_memory_gb(data_root, method, batch):
    """Resident memory one ViT-B pretraining step adds on the CPU (float32 weights, gradients, AdamW
    state, activations), measured in a fresh process so that nothing else set its high-water mark."""
    code = ('import resource, torch, bench; start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; '
            f'bench.bare_step_rate(bench.pretrain_args({data_root!r}, "vit_base_patch16", {method!r}, {batch}, 1, '
            '"unused", "cpu"), 1, torch.device("cpu")); '
            'print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) / 2 ** 20)')
    run = subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True, capture_output=True, text=True)
    return float(run.stdout.split()[-1])


def bench_memory(args, workdir, device):
    """Opt-in (about 2 minutes): ViT-B step memory at batch 8 and 16 on the CPU. It is linear in the
    batch, so the two points give the memory per GPU at batch 64 (on CUDA, train_bare_step_peak_memory_gb
    measures it directly)."""
    data_root = encode_synthetic(workdir, 224, 3)
    for method in ('mae', 'diffmae'):
        small, large = step_memory_gb(data_root, method, 8), step_memory_gb(data_root, method, 16)
        per_image = (large - small) / 8
        report('train_step_memory_gb', small, 'GiB', model='vit_base_patch16', method=method, batch=8, dtype='float32')
        report('train_step_memory_gb', large, 'GiB', model='vit_base_patch16', method=method, batch=16, dtype='float32')
        report('train_step_memory_gb_at_64', large + 48 * per_image, 'GiB', model='vit_base_patch16', method=method,
               dtype='float32', per_image_gb=round(per_image, 3),
               note='linear from batch 8 and 16; bf16 autocast on a GPU keeps most activations in half the bytes')


# ----------------------------------------------------------------------------------------------
# probe: feature cache speed-up; ddp: 1 vs 2 processes

def bench_probe(args, workdir, device):
    """Wall time of the same probe with and without --cache-features, in this process (no start-up)."""
    data_root = encode_synthetic(workdir, 64, 60)
    encoder_path = os.path.join(workdir, 'encoder.pth')
    pretrain.save_encoder(encoder_path, common.build_encoder('vit_tiny_patch16', 64), {})
    seconds = {}
    for cache in (False, True):
        argv = ['--data', 'synthetic', '--data-root', data_root, '--model', 'vit_tiny_patch16', '--init', encoder_path,
                '--epochs', '20', '--num-workers', '0', '--print-every', '1000', '--device', device.type,
                '--output-dir', os.path.join(workdir, f'probe_{cache}')] + (['--cache-features'] if cache else [])
        started = time.perf_counter()
        with open(os.devnull, 'w') as quiet, contextlib.redirect_stdout(quiet):
            probe.main(probe.get_args(argv))
        seconds[cache] = time.perf_counter() - started
    report('probe_cache_features_speedup', seconds[False] / seconds[True], 'x', epochs=20, model='vit_tiny_patch16',
           size=64, train_samples=360, seconds_plain=round(seconds[False], 1), seconds_cached=round(seconds[True], 1))


def ddp_device(device):
    """NCCL across GPUs needs a GPU per process: with fewer than 2, the 1 vs 2 comparison runs on the
    CPU with gloo."""
    return 'cuda' if device.type == 'cuda' and torch.cuda.device_count() >= 2 else 'cpu'


def bench_ddp(args, workdir, device):
    data_root = encode_synthetic(workdir, 64, 60)
    ddp_on = ddp_device(device)
    rates = {}
    for processes in (1, 2):
        out_dir = os.path.join(workdir, f'ddp_{processes}')
        args_list = pretrain_args(data_root, 'vit_test', 'diffmae', 64, 2, out_dir, ddp_on,
                                  ['--decoder-depth', '2', '--decoder-dim', '128', '--decoder-heads', '4'])
        launcher = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={processes}']
        subprocess.run(launcher + ['pretrain.py', *args_list], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        rates[processes] = last_epoch_rate(out_dir)
        report('ddp_images_per_s', rates[processes], 'images/s', processes=processes, model='vit_test', size=64,
               batch=64, backend='nccl' if ddp_on == 'cuda' else 'gloo')
    report('ddp_scaling_2_vs_1', rates[2] / rates[1], 'ratio',
           note='one GPU per process' if ddp_on == 'cuda' else 'on CPU both share the same cores')


def main(args):
    workdir = args.workdir or tempfile.mkdtemp(prefix='s2i_bench_')
    cuda = args.device == 'cuda' or (args.device == 'auto' and torch.cuda.is_available())
    device = torch.device('cuda' if cuda else 'cpu')
    groups = args.only.split(',')
    try:
        for name, bench in [('encode', bench_encode), ('loader', bench_loader), ('train', bench_train),
                            ('probe', bench_probe), ('ddp', bench_ddp), ('memory', bench_memory)]:
            if name in groups:
                bench(args, workdir, device)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == '__main__':
    main(get_args())
