"""The whole pipeline on encode.py's own synthetic dataset: encode -> pretrain -> probe -> finetune -> ensemble."""
import json

import torch

import encode
import ensemble
import finetune
import pretrain
import probe

torch.set_num_threads(1)


def test_synthetic_pipeline_learns(tmp_path):
    data, runs = str(tmp_path / 'data'), tmp_path / 'runs'
    encode.main(encode.get_args(['--data', 'synthetic', '--out', data, '--size', '32', '--synthetic-train', '30',
                                 '--synthetic-test', '10', '--quiet']))
    shared = ['--data', 'synthetic', '--data-root', data, '--model', 'vit_test', '--num-workers', '0']
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
