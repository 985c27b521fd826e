"""The whole pipeline on encode.py's own synthetic dataset: encode -> pretrain -> probe -> finetune -> ensemble;
and each training stage copied alone into an empty folder."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import encode
import ensemble
import finetune
import pretrain
import probe
from fixtures import stage_args, write_encoded

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_synthetic_pipeline_learns(tmp_path):
    data, runs = str(tmp_path / 'data'), tmp_path / 'runs'
    encode.main(encode.get_args(['--data', 'synthetic', '--out', data, '--size', '32', '--synthetic-train', '30',
                                 '--synthetic-test', '10', '--quiet']))
    shared = stage_args(data, '--flip', 'x-only')   # sided classes (wave right / left arm): a true mirror swaps them
    pretrain.main(pretrain.get_args(shared + [
        '--init', 'none', '--epochs', '4', '--batch-size', '60', '--blr', '1.5e-3', '--warmup-epochs', '1',
        '--decoder-depth', '1', '--decoder-dim', '32', '--decoder-heads', '2', '--print-every', '0',
        '--output-dir', str(runs / 'pretrain')]))
    pretrain_log = [json.loads(line) for line in (runs / 'pretrain' / 'log.jsonl').read_text().splitlines()]
    assert [record['epoch'] for record in pretrain_log] == [0, 1, 2, 3]   # the loss falling: test_pretrain.py

    encoder = str(runs / 'pretrain' / 'encoder.pth')
    probe_metrics = probe.main(probe.get_args(shared + [
        '--init', encoder, '--epochs', '20', '--warmup-epochs', '2', '--cache-features',
        '--output-dir', str(runs / 'probe')]))
    assert probe_metrics['top1'] > 40, probe_metrics['top1']            # 6 classes: chance is 16.7%

    for stream in ('joint', 'bone'):
        metrics = finetune.main(finetune.get_args(shared + [
            '--modality', stream, '--init', encoder, '--epochs', '8', '--warmup-epochs', '1', '--batch-size', '30',
            '--output-dir', str(runs / stream)]))
        assert metrics['top1'] > 40, (stream, metrics['top1'])
    fused = ensemble.main(ensemble.get_args([str(runs / 'joint'), str(runs / 'bone'),
                                             '--output', str(runs / 'ensemble.json')]))
    written = json.loads((runs / 'ensemble.json').read_text())
    assert written['fused']['top1'] == fused['fused']['top1'] > 40


STAGE_FLAGS = {   # one epoch of each stage, from scratch
    'pretrain': ('--decoder-depth', '1', '--decoder-dim', '32', '--decoder-heads', '2', '--warmup-epochs', '0'),
    'probe': ('--cache-features',),
    'finetune': (),
}


@pytest.mark.parametrize('stage', list(STAGE_FLAGS))
def test_a_stage_runs_copied_alone(tmp_path, stage):
    """A stage is copyable: its script with common.py, pictures.py and joints.yaml, and nothing else of
    the project, runs in a folder of its own and writes its outputs there."""
    folder = tmp_path / 'alone'
    folder.mkdir()
    for name in (f'{stage}.py', 'common.py', 'pictures.py', 'joints.yaml'):
        shutil.copy(os.path.join(ROOT, name), folder)
    write_encoded(str(tmp_path / 'data'), size=32)
    argv = stage_args(tmp_path / 'data', '--init', 'none', '--epochs', '1', '--batch-size', '32', '--print-every', '0',
                      '--output-dir', 'run', *STAGE_FLAGS[stage])
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}     # only the folder's own modules
    run = subprocess.run([sys.executable, f'{stage}.py', *argv], cwd=folder, env=dict(env, OMP_NUM_THREADS='1'),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    if stage == 'pretrain':
        assert torch.load(folder / 'run' / 'encoder.pth', weights_only=True)['meta']['epoch'] == 1
    else:
        result = json.loads((folder / 'run' / 'result.json').read_text())
        assert result['epoch'] == 0 and 0 <= result['top1'] <= 100
