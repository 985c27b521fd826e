"""probe.py: the encoder stays frozen, the head learns, result files have the contract's shapes."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import common
import pretrain
import probe
from fixtures import stage_args, write_encoded

torch.set_num_threads(1)


@pytest.fixture()
def encoded(tmp_path):
    write_encoded(str(tmp_path / 'data'), num_classes=4)
    torch.manual_seed(0)
    path = str(tmp_path / 'encoder.pth')
    pretrain.save_encoder(path, common.build_encoder('vit_test', img_size=32), {'test': True})
    return tmp_path, path


def probe_argv(tmp_path, encoder, *extra):
    return stage_args(tmp_path / 'data', '--init', encoder, '--output-dir', str(tmp_path / 'run'), '--batch-size', '16',
                      '--warmup-epochs', '1', '--print-every', '1000', *extra)


def probe_args(tmp_path, encoder, *extra):
    return probe.get_args(probe_argv(tmp_path, encoder, *extra))


def test_encoder_frozen_head_trained(encoded, monkeypatch):
    tmp_path, encoder_path = encoded
    made = {}
    build, make_head = common.build_encoder, probe.make_probe_head

    def keep_encoder(*a, **k):
        made['encoder'] = build(*a, **k)
        return made['encoder']

    def keep_head(*a, **k):
        made['head'] = make_head(*a, **k)
        made['head_before'] = {k: v.clone() for k, v in made['head'].state_dict().items()}
        return made['head']

    monkeypatch.setattr(common, 'build_encoder', keep_encoder)
    monkeypatch.setattr(probe, 'make_probe_head', keep_head)
    probe.main(probe_args(tmp_path, encoder_path, '--epochs', '3'))
    saved = torch.load(encoder_path, weights_only=True)['model']
    after = made['encoder'].state_dict()
    assert set(saved) == set(after)
    for name, value in saved.items():
        assert torch.equal(value, after[name].cpu()), f'encoder tensor {name} changed during probing'
    assert all(not p.requires_grad for p in made['encoder'].parameters())
    assert not made['encoder'].training
    head_after = made['head'].state_dict()
    assert not torch.equal(made['head_before']['1.weight'], head_after['1.weight'])
    assert not torch.equal(made['head_before']['0.running_mean'], head_after['0.running_mean'])
    # the head is BatchNorm without affine + Linear
    assert made['head'][0].weight is None and isinstance(made['head'][1], torch.nn.Linear)


def test_probe_learns_and_writes_results(encoded):
    tmp_path, encoder_path = encoded
    metrics = probe.main(probe_args(tmp_path, encoder_path, '--epochs', '20', '--eval-every', '10'))
    run = tmp_path / 'run'
    assert metrics['top1'] > 60, metrics['top1']                   # 4 classes: chance is 25%
    result = json.loads((run / 'result.json').read_text())
    assert result['top1'] == pytest.approx(metrics['top1'])
    assert result['epoch'] == 19 and result['best_top1'] >= result['top1'] and len(result['per_class']) == 4
    logits = np.load(run / 'test_logits.npy')
    labels = np.load(run / 'test_labels.npy')
    names = (run / 'test_names.txt').read_text().split()
    assert logits.shape == (32, 4) and logits.dtype == np.float32
    assert names == (tmp_path / 'data/synthetic/xsub/test_names.txt').read_text().split()
    assert np.array_equal(labels, np.load(tmp_path / 'data/synthetic/xsub/test_labels.npy'))
    assert (logits.argmax(1) == labels).mean() * 100 == pytest.approx(result['top1'])
    log = [json.loads(line) for line in (run / 'log.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in log] == list(range(20))
    assert 'test_top1' in log[9] and 'test_top1' not in log[8] and log[0]['images_per_s'] > 0
    assert (run / 'confusion.png').stat().st_size > 0 and (run / 'checkpoint.pth').is_file()


def test_cached_features_learn_and_resume(encoded):
    tmp_path, encoder_path = encoded
    probe.main(probe_args(tmp_path, encoder_path, '--epochs', '10', '--cache-features'))
    state = torch.load(tmp_path / 'run' / 'checkpoint.pth', weights_only=True)
    assert state['epoch'] == 9
    metrics = probe.main(probe_args(tmp_path, encoder_path, '--epochs', '20', '--cache-features', '--resume', 'auto'))
    log = [json.loads(line) for line in (tmp_path / 'run' / 'log.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in log] == list(range(20))          # resumed at epoch 10, not from scratch
    assert metrics['top1'] > 60, metrics['top1']


def test_missing_init_is_a_clear_error():
    with pytest.raises(SystemExit, match='encoder.pth'):
        probe.get_args(['--data', 'synthetic'])


def test_two_processes_match_one(encoded):
    """torchrun --nproc_per_node 2 (gloo) gives one process's logits up to rounding: the augmentation
    is drawn for the global batch, and the BatchNorm sees the global batch's statistics (its running
    mean and variance equal one process's, as with MAE's SyncBatchNorm)."""
    tmp_path, encoder_path = encoded
    argv = probe_argv(tmp_path, encoder_path, '--epochs', '2', '--blr', '1.0')
    probe.main(probe.get_args(argv + ['--output-dir', str(tmp_path / 'one')]))
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'probe.py')
    run = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                          script, *argv, '--output-dir', str(tmp_path / 'two')], env=dict(os.environ, OMP_NUM_THREADS='1'),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    one, two = (torch.load(tmp_path / name / 'checkpoint.pth', weights_only=True)['model'] for name in ('one', 'two'))
    for name in ('0.running_mean', '0.running_var', '1.weight'):
        assert torch.allclose(one[name], two[name], rtol=1e-4, atol=1e-6), name
    logits = np.load(tmp_path / 'one' / 'test_logits.npy')
    np.testing.assert_allclose(np.load(tmp_path / 'two' / 'test_logits.npy'), logits, rtol=1e-4, atol=1e-5)
    assert logits.std() > 0.1                                   # a trained head, not zeros on both sides


def read_log(run):
    return [json.loads(line) for line in (run / 'log.jsonl').read_text().splitlines()]


@pytest.mark.parametrize('cache', [False, True])
def test_stop_and_resume_equals_uninterrupted(encoded, cache):
    """--stop-after 3 then --resume auto: the same logits, bit for bit, and each epoch logged once."""
    tmp_path, encoder_path = encoded
    flags = ('--epochs', '5', '--eval-every', '2', '--save-every', '1', '--blr', '1.0') + (('--cache-features',) if cache else ())
    probe.main(probe.get_args(probe_argv(tmp_path, encoder_path, *flags, '--output-dir', str(tmp_path / 'straight'))))
    split = ['--output-dir', str(tmp_path / 'split')]
    probe.main(probe.get_args(probe_argv(tmp_path, encoder_path, *flags, '--stop-after', '3') + split))
    assert [r['epoch'] for r in read_log(tmp_path / 'split')] == [0, 1, 2]
    assert torch.load(tmp_path / 'split' / 'checkpoint.pth', weights_only=True)['epoch'] == 2
    probe.main(probe.get_args(probe_argv(tmp_path, encoder_path, *flags, '--resume', 'auto') + split))
    straight, resumed = read_log(tmp_path / 'straight'), read_log(tmp_path / 'split')
    assert [r['epoch'] for r in resumed] == [0, 1, 2, 3, 4]
    assert [r['loss'] for r in resumed] == [r['loss'] for r in straight]
    logits = np.load(tmp_path / 'straight' / 'test_logits.npy')
    assert np.array_equal(np.load(tmp_path / 'split' / 'test_logits.npy'), logits)
    assert json.loads((tmp_path / 'split' / 'result.json').read_text())['best_epoch'] == \
        json.loads((tmp_path / 'straight' / 'result.json').read_text())['best_epoch']


def test_bf16_autocast_and_compile_on_the_cpu(encoded, monkeypatch):
    """--precision bf16 extracts features under autocast on the CPU (logits near float32's, not
    equal); --compile (aot_eager backend: inductor takes minutes here) gives float32's bit for bit."""
    tmp_path, encoder_path = encoded
    compile_ = torch.compile
    monkeypatch.setattr(torch, 'compile', lambda model: compile_(model, backend='aot_eager'))
    runs = {'fp32': (), 'bf16': ('--precision', 'bf16'), 'compile': ('--compile',)}
    for name, flags in runs.items():
        probe.main(probe_args(tmp_path, encoder_path, '--epochs', '2', '--blr', '1.0', *flags,
                              '--output-dir', str(tmp_path / name)))
    logits = {name: np.load(tmp_path / name / 'test_logits.npy') for name in runs}
    assert np.array_equal(logits['compile'], logits['fp32'])
    assert not np.array_equal(logits['bf16'], logits['fp32'])
    scale = np.abs(logits['fp32']).max()
    assert scale > 0.1 and np.abs(logits['bf16'] - logits['fp32']).max() < 0.1 * scale


@pytest.mark.parametrize('cache', [False, True])
def test_eval_scores_a_checkpoint_as_its_last_epoch(encoded, cache):
    """--eval --resume RUN/checkpoint.pth: the test split scored again without training, into another
    folder; the logits and result equal the run's last epoch bit for bit, and the run is untouched."""
    tmp_path, encoder_path = encoded
    flags = ('--epochs', '3', '--blr', '1.0') + (('--cache-features',) if cache else ())
    probe.main(probe_args(tmp_path, encoder_path, *flags))
    run, scored = tmp_path / 'run', tmp_path / 'scored'
    log = (run / 'log.jsonl').read_text()
    probe.main(probe.get_args(probe_argv(tmp_path, encoder_path, *flags, '--eval', '--resume', str(run / 'checkpoint.pth'),
                                         '--epochs', '50', '--output-dir', str(scored))))
    assert np.array_equal(np.load(scored / 'test_logits.npy'), np.load(run / 'test_logits.npy'))
    for name in ('test_labels.npy', 'test_names.txt'):
        assert (scored / name).read_bytes() == (run / name).read_bytes()
    ran, again = (json.loads((folder / 'result.json').read_text()) for folder in (run, scored))
    for key in ('top1', 'top5', 'mean_class_accuracy', 'per_class', 'best_top1', 'epoch', 'epochs'):
        assert again[key] == ran[key], key
    assert again['epoch'] == 2 and again['epochs'] == 3                     # the checkpoint's run, not --epochs 50
    assert (scored / 'confusion.png').is_file() and not (scored / 'log.jsonl').exists()
    assert (run / 'log.jsonl').read_text() == log


def test_eval_without_a_checkpoint_is_one_line(encoded):
    tmp_path, encoder_path = encoded
    with pytest.raises(SystemExit, match='--eval: no checkpoint to score'):
        probe.main(probe_args(tmp_path, encoder_path, '--eval'))
