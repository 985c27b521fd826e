"""probe.py: the encoder stays frozen, the head learns, result files have the contract's shapes."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import probe  # noqa: E402
from fixtures import write_encoded  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture()
def encoded(tmp_path):
    write_encoded(str(tmp_path / 'data'), num_classes=4)
    torch.manual_seed(0)
    path = str(tmp_path / 'encoder.pth')
    common.save_encoder(path, common.build_encoder('vit_test', img_size=32), {'test': True})
    return tmp_path, path


def probe_argv(tmp_path, encoder, *extra):
    return ['--data', 'synthetic', '--data-root', str(tmp_path / 'data'), '--model', 'vit_test', '--init', encoder,
            '--output-dir', str(tmp_path / 'run'), '--num-workers', '0', '--batch-size', '16', '--warmup-epochs', '1',
            '--print-every', '1000', *extra]


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


def test_two_processes_score_with_one_head(encoded):
    """Under torchrun each rank scores its shard of the test set; all shards must see rank 0's head,
    BatchNorm statistics included (the saved checkpoint reproduces every logit)."""
    tmp_path, encoder_path = encoded
    argv = probe_argv(tmp_path, encoder_path, '--epochs', '2', '--blr', '1.0')
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'probe.py')
    run = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                          script, *argv], env=dict(os.environ, OMP_NUM_THREADS='1'), capture_output=True,
                         text=True, timeout=300)
    args = probe.get_args(argv)
    assert run.returncode == 0, run.stderr[-2000:]
    args.protocol = common.resolve_protocol(args.data_root, 'synthetic', None)
    out_dir = common.output_dir(args, 'probe', 'linear')
    encoder = common.build_encoder('vit_test', img_size=32)
    common.load_encoder_weights(encoder, encoder_path, 'vit_test', log=lambda *a: None)
    head = probe.make_probe_head(encoder.embed_dim, 4)
    head.load_state_dict(torch.load(os.path.join(out_dir, 'checkpoint.pth'), weights_only=False)['model'])
    protocol = common.resolve_protocol(args.data_root, 'synthetic', None)
    meta = common.load_meta(args.data_root, 'synthetic', protocol)
    mean, std = common.channel_stats(meta, 'joint', torch.device('cpu'))
    test_path, test_labels, _ = common.read_split(args.data_root, 'synthetic', protocol, 'test', 'joint')
    features = probe.extract_all(lambda x: encoder.eval()(x), common.S2IDataset([test_path], [test_labels]), 8, args,
                                 torch.device('cpu'), mean, std, common.is_planar(meta))
    with torch.no_grad():
        expected = head.eval()(features).numpy()
    np.testing.assert_allclose(np.load(os.path.join(out_dir, 'test_logits.npy')), expected, rtol=1e-4, atol=1e-5)


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
