"""Every refusal is one line on stderr, a non-zero exit, no traceback and nothing half-written.

Each row of CASES runs a script as its own process: one driver process (this file run as a
script) imports torch and timm once, then forks a child per case that runs the script through
its real `if __name__ == '__main__'` block and ends as the interpreter would (a SystemExit's
message, or the traceback of any other exception). Forking saves the ~5 s import and ~3 s torch
teardown of a fresh interpreter per case.
"""
import json
import os
import runpy
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
from fixtures import stage_args, write_encoded

torch.set_num_threads(1)

PRETRAIN = ['pretrain.py', *stage_args('{data}', '--init', 'none', '--batch-size', '16', '--decoder-dim', '32',
                                       '--decoder-depth', '1', '--decoder-heads', '2', '--epochs', '1', '--print-every', '0',
                                       '--output-dir', '{out}')]
PROBE = ['probe.py', *stage_args('{data}', '--init', '{files}/encoder.pth', '--batch-size', '16', '--epochs', '1',
                                 '--output-dir', '{out}')]
FINETUNE = ['finetune.py', *stage_args('{data}', '--init', 'none', '--batch-size', '16', '--epochs', '1', '--output-dir', '{out}')]
ENSEMBLE = ['ensemble.py', '--output', '{out}/ensemble.json']
NOT_WRITABLE = '/sys/s2i_run' if os.geteuid() == 0 else '{files}/read_only/run'   # root ignores permissions

# (name, command, expected exit status, what stderr's one line must contain)
CASES = [
    ('init a list', PROBE + ['--init', '{files}/list.pth'], 1, 'list.pth: holds a list'),
    ('init a tensor', FINETUNE + ['--init', '{files}/tensor.pth'], 1, 'tensor.pth: holds a Tensor'),
    ('init random bytes', PRETRAIN + ['--init', '{files}/random.bin'], 1, 'random.bin: not a readable torch checkpoint'),
    ('init truncated', FINETUNE + ['--init', '{files}/truncated.pth'], 1, 'truncated.pth: not a readable torch checkpoint'),
    ('init 0 bytes', PROBE + ['--init', '{files}/empty.pth'], 1, 'empty.pth: empty file (0 bytes)'),
    ('resume a list', PRETRAIN + ['--resume', '{files}/list.pth'], 1, 'list.pth: holds a list'),
    ('resume a tensor', PROBE + ['--resume', '{files}/tensor.pth'], 1, 'tensor.pth: holds a Tensor'),
    ('resume random bytes', FINETUNE + ['--resume', '{files}/random.bin'], 1, 'random.bin: not a readable torch checkpoint'),
    ('resume truncated', FINETUNE + ['--resume', '{files}/truncated.pth'], 1, 'not a readable torch checkpoint'),
    ('resume 0 bytes', PROBE + ['--resume', '{files}/empty.pth'], 1, 'empty.pth: empty file'),
    ('resume an encoder.pth', FINETUNE + ['--resume', '{files}/encoder.pth'], 1, 'not a checkpoint.pth of these scripts'),
    ('pretrain resumes finetune', PRETRAIN + ['--resume', '{files}/finetune.pth'], 1,
     'a finetune checkpoint; pretrain.py resumes only its own'),
    ('finetune resumes pretrain', FINETUNE + ['--resume', '{files}/pretrain.pth'], 1,
     'a pretrain checkpoint; finetune.py resumes only its own'),
    ('probe resumes finetune', PROBE + ['--resume', '{files}/finetune.pth'], 1, 'a finetune checkpoint; probe.py'),
    ('init another architecture', FINETUNE + ['--init', '{files}/wide.pth'], 1, 'the checkpoint is for another architecture'),
    ('resume another architecture', PRETRAIN + ['--resume', '{files}/pretrain.pth', '--model', 'vit_tiny_patch16'], 1,
     'written for another model or head'),
    ('batch size 0', PRETRAIN + ['--batch-size', '0'], 1, '--batch-size 0: expected a whole number of at least 1'),
    ('batch size negative', PROBE + ['--batch-size', '-4'], 1, '--batch-size -4: expected'),
    ('epochs 0', FINETUNE + ['--epochs', '0'], 1, '--epochs 0: expected'),
    ('epochs negative', PRETRAIN + ['--epochs', '-1'], 1, '--epochs -1: expected'),
    ('accum-iter 0', PRETRAIN + ['--accum-iter', '0'], 1, '--accum-iter 0: expected'),
    ('mask ratio 1', PRETRAIN + ['--mask-ratio', '1'], 1, '--mask-ratio 1.0: expected a fraction strictly between 0 and 1'),
    ('mask ratio 0', PRETRAIN + ['--mask-ratio', '0'], 1, '--mask-ratio 0.0: expected'),
    ('label fraction 0', FINETUNE + ['--label-fraction', '0'], 1, '--label-fraction 0.0: expected a fraction in (0, 1]'),
    ('label fraction 1.5', FINETUNE + ['--label-fraction', '1.5'], 1, '--label-fraction 1.5: expected'),
    ('batch larger than the split', PROBE + ['--cache-features', '--batch-size', '512'], 0,
     'warning: --batch-size 512 is larger than the 64 train samples; every epoch is one step of 64'),
    ('batch larger than a label fraction', FINETUNE + ['--label-fraction', '0.1'], 0,
     'warning: --batch-size 16 is larger than the 8 train samples; every epoch is one step of 8'),
    ('pretrain batch larger than the split', PRETRAIN + ['--batch-size', '128'], 0,
     'warning: --batch-size 128 is larger than the 64 train samples'),
    ('output dir is a file', FINETUNE + ['--output-dir', '{files}/list.pth'], 1, 'list.pth: is a file, expected a directory'),
    ('output dir not writable', PRETRAIN + ['--output-dir', NOT_WRITABLE], 1, 'cannot write there'),
    ('output dir under /proc', PROBE + ['--output-dir', '/proc/s2i_run'], 1, '--output-dir /proc/s2i_run: cannot write there'),
    ('no encoded dataset', FINETUNE + ['--data-root', '{files}/empty_root'], 1,
     'meta.json: not found; encode the dataset first'),
    ('split missing', PROBE + ['--data-root', '{files}/no_test_labels'], 1, 'test_labels.npy: not found'),
    ('stream missing', FINETUNE + ['--modality', 'motion', '--data-root', '{files}/no_motion'], 1, 'test_motion.npy: not found'),
    ('meta.json of an older format', PRETRAIN + ['--data-root', '{files}/old_meta'], 1, 'an older or foreign format (no mean, std)'),
    ('ensemble NaN logits', ENSEMBLE + ['{files}/run_good', '{files}/run_nan'], 1, 'run_nan: test_logits.npy holds 1 NaN or'),
    ('ensemble inf logits', ENSEMBLE + ['{files}/run_inf', '{files}/run_good'], 1, 'run_inf: test_logits.npy holds 2 NaN or'),
    ('ensemble other samples', ENSEMBLE + ['{files}/run_good', '{files}/run_other'], 1, 'run_other: its test samples'),
]


def write_run(folder, logits, names):
    os.makedirs(folder)
    np.save(os.path.join(folder, 'test_logits.npy'), np.asarray(logits, dtype=np.float32))
    np.save(os.path.join(folder, 'test_labels.npy'), np.arange(len(logits), dtype=np.int64) % 2)
    with open(os.path.join(folder, 'test_names.txt'), 'w') as f:
        f.write(''.join(f'{name}\n' for name in names))


def make_files(files, data):
    """The inputs the cases refer to: real checkpoints of every stage and the broken ones."""
    import common
    import finetune
    import pretrain
    pretrain.save_encoder(f'{files}/encoder.pth', common.build_encoder('vit_test', img_size=32), {})
    quiet = stage_args(data, '--init', 'none', '--batch-size', '16', '--epochs', '1', '--print-every', '0')
    pretrain.main(pretrain.get_args(quiet + ['--decoder-dim', '32', '--decoder-depth', '1', '--decoder-heads', '2',
                                             '--output-dir', f'{files}/pretrain_run']))
    finetune.main(finetune.get_args(quiet + ['--output-dir', f'{files}/finetune_run']))
    shutil.copy(f'{files}/pretrain_run/checkpoint.pth', f'{files}/pretrain.pth')
    shutil.copy(f'{files}/finetune_run/checkpoint.pth', f'{files}/finetune.pth')
    torch.save([1, 2, 3], f'{files}/list.pth')
    torch.save(torch.zeros(3), f'{files}/tensor.pth')
    open(f'{files}/random.bin', 'wb').write(np.random.default_rng(0).bytes(3000))
    whole = open(f'{files}/finetune.pth', 'rb').read()
    open(f'{files}/truncated.pth', 'wb').write(whole[:len(whole) // 2])
    open(f'{files}/empty.pth', 'wb').close()
    from timm.models.vision_transformer import VisionTransformer
    wide = VisionTransformer(img_size=64, patch_size=16, embed_dim=48, depth=2, num_heads=2, num_classes=0)
    torch.save({'model': wide.state_dict()}, f'{files}/wide.pth')   # and another grid: must not be resampled first
    os.makedirs(f'{files}/empty_root')
    for name in ('no_test_labels', 'no_motion', 'old_meta'):
        shutil.copytree(data, f'{files}/{name}')
    os.remove(f'{files}/no_test_labels/synthetic/xsub/test_labels.npy')
    os.remove(f'{files}/no_motion/synthetic/xsub/test_motion.npy')
    meta_path = f'{files}/old_meta/synthetic/xsub/meta.json'
    meta = json.load(open(meta_path))
    del meta['mean'], meta['std']
    json.dump(meta, open(meta_path, 'w'))
    names = ['a', 'b', 'c']
    write_run(f'{files}/run_good', [[1, 0], [0, 1], [1, 0]], names)
    write_run(f'{files}/run_nan', [[1, 0], [np.nan, 1], [1, 0]], names)
    write_run(f'{files}/run_inf', [[np.inf, 0], [0, 1], [1, -np.inf]], names)
    write_run(f'{files}/run_other', [[1, 0], [0, 1], [1, 0]], ['a', 'c', 'b'])
    if os.geteuid() != 0:
        os.makedirs(f'{files}/read_only')
        os.chmod(f'{files}/read_only', 0o555)


@pytest.fixture(scope='module')
def results(tmp_path_factory):
    """Run every case once (in the driver below); returns {name: (status, stdout, stderr, out_dir)}."""
    base = tmp_path_factory.mktemp('errors')
    files, data = str(base / 'files'), str(base / 'data')
    os.makedirs(files)
    write_encoded(data, num_classes=4)
    make_files(files, data)
    commands = []
    for i, (name, command, _, _) in enumerate(CASES):
        out = str(base / f'out{i}')
        commands.append([part.format(data=data, files=files, out=out) for part in command])
    with open(base / 'cases.json', 'w') as f:
        json.dump(commands, f)
    driver = subprocess.run([sys.executable, __file__, str(base / 'cases.json'), str(base / 'results.json')],
                            env=dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT), capture_output=True, text=True, timeout=600)
    assert driver.returncode == 0, driver.stderr[-3000:]
    ran = json.load(open(base / 'results.json'))
    return {name: (*ran[i], str(base / f'out{i}')) for i, (name, _, _, _) in enumerate(CASES)}


@pytest.mark.parametrize('name,status,expected', [(c[0], c[2], c[3]) for c in CASES], ids=[c[0] for c in CASES])
def test_one_clear_line(results, name, status, expected):
    code, stdout, stderr, out_dir = results[name]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert 'Traceback' not in stderr + stdout, stderr
    assert code == status and len(lines) == 1, (code, stderr)
    assert expected in lines[0], lines[0]
    if status:   # nothing written: no output directory, or an empty one
        assert not os.path.isdir(out_dir) or os.listdir(out_dir) == [], os.listdir(out_dir)
    if name == 'init another architecture':
        assert 'resampled' not in stdout, stdout


def test_disk_full_while_checkpointing(tmp_path):
    """The disk fills up while checkpoint.pth is written: one line naming it and the reason, and the
    previous checkpoint stays intact and loadable. A real full disk (a small tmpfs) when this runs
    as root and may mount; otherwise torch.save's file write raises ENOSPC."""
    write_encoded(str(tmp_path / 'data'), num_classes=4)
    argv = stage_args(tmp_path / 'data', '--init', 'none', '--batch-size', '16', '--print-every', '0', '--save-every', '1',
                      '--epochs', '1')
    import finetune
    finetune.main(finetune.get_args(argv + ['--output-dir', str(tmp_path / 'sizes')]))
    sizes = {name: os.path.getsize(tmp_path / 'sizes' / name) for name in os.listdir(tmp_path / 'sizes')}
    disk = tmp_path / 'disk'
    disk.mkdir()
    # room for one epoch's files plus half a checkpoint: the second checkpoint.pth.tmp cannot fit
    room = sum(sizes.values()) + sizes['checkpoint.pth'] // 2 + 64 * 1024
    mounted = os.geteuid() == 0 and subprocess.run(
        ['mount', '-t', 'tmpfs', '-o', f'size={room}', 'tmpfs', str(disk)], capture_output=True).returncode == 0
    try:
        out = disk / 'run'
        finetune.main(finetune.get_args(argv + ['--output-dir', str(out), '--stop-after', '1', '--epochs', '3']))
        before = (out / 'checkpoint.pth').read_bytes()
        command = [sys.executable, os.path.join(ROOT, 'finetune.py'), *argv, '--epochs', '3', '--output-dir', str(out),
                   '--resume', 'auto']
        if not mounted:   # the same failure, made in the process: torch.save's file write raises ENOSPC
            command = [sys.executable, '-c', FULL_DISK, *command[1:]]
        run = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT),
                             timeout=300)
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        assert run.returncode == 1 and len(lines) == 1 and 'Traceback' not in run.stderr, run.stderr
        assert lines[0] == f'{out}/checkpoint.pth: no space left on device while writing it; the previous checkpoint.pth is intact'
        assert (out / 'checkpoint.pth').read_bytes() == before and not (out / 'checkpoint.pth.tmp').exists()
        assert torch.load(out / 'checkpoint.pth', weights_only=True)['epoch'] == 0
    finally:
        if mounted:
            subprocess.run(['umount', str(disk)], check=True)


FULL_DISK = '''import errno, os, runpy, sys, torch
save = torch.save
def full(obj, f, *a, **k):
    if getattr(f, 'name', '').endswith('checkpoint.pth.tmp'):
        f.write(b'x' * 100)
        raise OSError(errno.ENOSPC, 'No space left on device')
    return save(obj, f, *a, **k)
torch.save = full
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def run_cases(cases_path, results_path):
    """Driver: fork one child per command; the child runs the script as __main__ with stdout and
    stderr in files, and whatever ends it reaches the interpreter, as in a real run."""
    import timm.models.vision_transformer  # noqa: F401  (imported once, before any fork)
    commands = json.load(open(cases_path))
    results = []
    for i, command in enumerate(commands):
        streams = [f'{results_path}.{i}.{name}' for name in ('stdout', 'stderr')]
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            for fd, path in zip((1, 2), streams):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            sys.argv = command
            try:
                runpy.run_path(os.path.join(ROOT, command[0]), run_name='__main__')
                code = 0
            except SystemExit as end:            # what the interpreter does with a SystemExit
                code = end.code if isinstance(end.code, int) else 0 if end.code is None else 1
                if not isinstance(end.code, int) and end.code is not None:
                    print(end.code, file=sys.stderr)
            except BaseException:                # ... and with any other exception: the traceback
                sys.excepthook(*sys.exc_info())
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)                       # skips torch's 3 s interpreter teardown
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        results.append([status] + [open(path).read() for path in streams])
    json.dump(results, open(results_path, 'w'))


if __name__ == '__main__':
    run_cases(*sys.argv[1:3])
