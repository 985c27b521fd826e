"""finetune.py: layer-wise lr decay, label-fraction subsets, learning, one-shot 1-NN and pairs."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
import common
import finetune
import pretrain
from fixtures import stage_args, write_encoded

torch.set_num_threads(1)


def make_args(tmp_path, *extra):
    return finetune.get_args(train_args(tmp_path, '--output-dir', str(tmp_path / 'run'), '--print-every', '1000', *extra))


def train_args(tmp_path, *extra):
    """The tiny fine-tuning run of these tests on tmp_path/data."""
    return stage_args(tmp_path / 'data', '--init', 'none', '--batch-size', '16', '--warmup-epochs', '1', '--lr', '3e-3',
                      *extra)


@pytest.mark.parametrize('model,head', [('vit_test', 'linear'), ('vit_test', 'mlp'), ('vit_base_patch16', 'linear')])
def test_layer_decay_scales(model, head, tmp_path):
    args = make_args(tmp_path, '--model', model, '--head', head)
    net = finetune.build_model(args, 224 if model == 'vit_base_patch16' else 32, num_classes=5)
    depth = len(net.blocks)
    groups = common.param_groups(net, 0.05, lambda n: finetune.layer_scale(n, depth, 0.75))
    optimizer = torch.optim.AdamW(groups, lr=1.0)
    common.set_lr(optimizer, 2e-3)
    lr_of = {id(p): (g['lr'], g['weight_decay']) for g in optimizer.param_groups for p in g['params']}
    params = dict(net.named_parameters())
    last_head = 'head.weight' if head == 'linear' else 'head.2.weight'
    expected = {  # hand-computed: layer 0 = embeddings, blocks.i = i + 1, norm/head = depth + 1
        'cls_token': (0.75 ** (depth + 1), 0.0),
        'pos_embed': (0.75 ** (depth + 1), 0.0),
        'patch_embed.proj.weight': (0.75 ** (depth + 1), 0.05),
        'blocks.0.attn.qkv.weight': (0.75 ** depth, 0.05),
        'blocks.0.norm1.bias': (0.75 ** depth, 0.0),
        f'blocks.{depth - 1}.mlp.fc2.weight': (0.75, 0.05),
        'norm.weight': (1.0, 0.0),
        last_head: (1.0, 0.05),
    }
    if model == 'vit_test':
        expected['blocks.1.mlp.fc1.weight'] = (0.75, 0.05)            # depth 2: 0.75 ** 1
        expected['cls_token'] = (0.421875, 0.0)                      # 0.75 ** 3
    else:
        expected['blocks.5.attn.proj.weight'] = (0.75 ** 7, 0.05)    # depth 12: layer 6
    for name, (scale, decay) in expected.items():
        lr, wd = lr_of[id(params[name])]
        assert math.isclose(lr, 2e-3 * scale, rel_tol=1e-9), (name, lr, 2e-3 * scale)
        assert wd == decay, name


def test_label_subset_deterministic_class_complete_rank_independent(tmp_path):
    labels = np.repeat(np.arange(7), [3, 50, 120, 1, 40, 77, 9])
    np.random.default_rng(1).shuffle(labels)
    a = finetune.label_subset(labels, 0.01, seed=3)
    np.random.seed(123)
    torch.manual_seed(99)
    b = finetune.label_subset(labels, 0.01, seed=3)
    assert np.array_equal(a, b)
    assert set(labels[a]) == set(range(7))                            # every class present
    assert np.bincount(labels[a], minlength=7).min() >= 1
    assert not np.array_equal(a, finetune.label_subset(labels, 0.01, seed=4))
    ten = finetune.label_subset(labels, 0.1, seed=3)
    assert list(np.bincount(labels[ten])) == [max(1, round(0.1 * n)) for n in [3, 50, 120, 1, 40, 77, 9]]
    # rank 1 of a world of 2, in another process with other global RNG states, picks the same samples
    code = ('import sys, numpy as np, torch; import finetune; '
            'np.random.seed(7); torch.manual_seed(7); labels = np.load(sys.argv[1]); '
            'print(" ".join(map(str, finetune.label_subset(labels, 0.01, seed=3))))')
    np.save(tmp_path / 'labels.npy', labels)
    env = dict(os.environ, RANK='1', WORLD_SIZE='2', LOCAL_RANK='1', OMP_NUM_THREADS='1')
    out = subprocess.run([sys.executable, '-c', code, str(tmp_path / 'labels.npy')], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert [int(x) for x in out.split()] == a.tolist()


def test_finetune_learns_semi_supervised_writes_results(tmp_path):
    write_encoded(str(tmp_path / 'data'), num_classes=4, train_per_class=32)
    metrics = finetune.main(make_args(tmp_path, '--epochs', '10', '--eval-every', '5', '--label-fraction', '0.5'))
    run = tmp_path / 'run'
    assert metrics['top1'] > 60, metrics['top1']                     # 4 classes: chance 25%
    subset = (run / 'train_subset.txt').read_text().split()
    names = (tmp_path / 'data/synthetic/xsub/train_names.txt').read_text().split()
    labels = np.load(tmp_path / 'data/synthetic/xsub/train_labels.npy')
    expected = finetune.label_subset(labels, 0.5, seed=0)
    assert subset == [names[i] for i in expected] and len(subset) == 64
    result = json.loads((run / 'result.json').read_text())
    assert result['epoch'] == 9 and result['settings']['label_fraction'] == 0.5
    logits = np.load(run / 'test_logits.npy')
    assert logits.shape == (32, 4) and logits.dtype == np.float32
    assert (run / 'test_names.txt').read_text().split() == (tmp_path / 'data/synthetic/xsub/test_names.txt').read_text().split()
    assert (logits.argmax(1) == np.load(run / 'test_labels.npy')).mean() * 100 == pytest.approx(result['top1'])
    assert len((run / 'log.jsonl').read_text().splitlines()) == 10


def test_one_shot_nn_hand_made():
    exemplars = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    exemplar_labels = torch.tensor([5, 7, 9])
    queries = torch.tensor([[2.0, 0.1], [0.1, 3.0], [-1.0, 0.5], [-0.5, -0.1]])
    truth = torch.tensor([5, 7, 7, 9])
    predictions, similarity = finetune.one_shot_nn(queries, exemplars, exemplar_labels)
    # q3 = (-1, 0.5): cosine 0.447 with (0, 1) but 0.894 with (-1, 0) -> 9, wrong; the rest right
    assert predictions.tolist() == [5, 7, 9, 9]
    assert (predictions == truth).float().mean().item() == 0.75
    assert similarity.shape == (4, 3)
    assert similarity[2, 2].item() == pytest.approx(1 / math.sqrt(1.25))


def test_supcon_loss_hand_made():
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # each anchor: one positive at similarity 1, two negatives at 0 -> -log(e / (e + 2))
    loss = finetune.supcon_loss(embeddings, labels, temperature=1.0)
    assert loss.item() == pytest.approx(math.log(1 + 2 / math.e), rel=1e-6)
    # an anchor without a positive is left out
    lone = finetune.supcon_loss(torch.cat([embeddings, torch.tensor([[0.6, 0.8]])]), torch.tensor([0, 0, 1, 1, 2]), 1.0)
    assert torch.isfinite(lone)


def test_oneshot_exemplars_official_then_fallback():
    novel = np.array([0, 6, 60])
    names = ['S002C001P001R001A001', 'S001C003P008R001A001', 'S001C001P001R001A007',
             'S001C002P001R001A007', 'S018C003P008R001A061', 'S019C001P001R001A061']
    labels = np.array([0, 0, 6, 6, 60, 60])
    chosen, source = finetune.oneshot_exemplars(labels, names, novel)
    assert chosen.tolist() == [1, 2, 4]                             # A7 has no official exemplar: first by name
    assert source == '2 official, 1 first by sorted name'
    assert finetune.oneshot_classes('1,7,13,19,25,31,37,43,49,55,61,67,73,79,85,91,97,103,109,115', 120).tolist() == list(range(0, 120, 6))


def test_pair_order_global_batches_of_pairs_dealt_to_ranks():
    """The global batches are same-class pairs whatever the world size; rank r holds rows r::world."""
    labels = np.repeat(np.arange(5), 9)
    alone = np.array(finetune.pair_order(labels, 0, 2, 0, 1, 8))
    assert len(alone) == 40                                          # 5 classes x 4 pairs: 5 batches of 8
    pairs = alone.reshape(-1, 2)
    assert (labels[pairs[:, 0]] == labels[pairs[:, 1]]).all() and len(set(alone)) == len(alone)
    orders = [np.array(finetune.pair_order(labels, 0, 2, rank, 2, 4)) for rank in range(2)]
    dealt = np.stack([order.reshape(-1, 4) for order in orders], axis=2).reshape(-1)   # rows r::2 of each batch
    np.testing.assert_array_equal(dealt, alone)
    assert not set(orders[0]) & set(orders[1])
    assert finetune.pair_order(labels, 0, 3, 0, 1, 8) != alone.tolist()   # reshuffled every epoch


def test_oneshot_run(tmp_path):
    write_encoded(str(tmp_path / 'data'), data='ntu120', num_classes=12, train_per_class=6, test_per_class=4)
    metrics = finetune.main(make_args(tmp_path, '--data', 'ntu120', '--protocol', 'oneshot', '--epochs', '2'))
    run = tmp_path / 'run'
    result = json.loads((run / 'result.json').read_text())
    assert result['settings']['novel_actions'] == [1, 7]              # of 12 classes: A1 and A7
    assert len(result['settings']['exemplars']) == 2 and result['per_class'] is not None
    logits = np.load(run / 'test_logits.npy')                         # cosine similarity to the 2 exemplars
    assert logits.shape == (2 * 10 - 2, 2) and np.abs(logits).max() <= 1 + 1e-5
    names = (run / 'test_names.txt').read_text().split()
    assert not set(names) & set(result['settings']['exemplars'])
    assert 0 <= metrics['top1'] <= 100


def test_missing_init_is_a_clear_error():
    with pytest.raises(SystemExit, match='--init'):
        finetune.get_args(['--data', 'synthetic'])
    assert finetune.get_args(['--data', 'ucla', '--init', 'none']).batch_size == 32   # Table 12
    assert finetune.get_args(['--data', 'ntu60', '--init', 'none']).batch_size == 128


def read_log(run):
    return [json.loads(line) for line in (run / 'log.jsonl').read_text().splitlines()]


PROTOCOLS = {   # extra flags of each protocol; transfer starts from an encoder of another dataset and size
    'full': (),
    'semi-supervised': ('--label-fraction', '0.5'),
    'transfer': ('--init', 'TRANSFER', '--head', 'mlp'),
    'one-shot': ('--data', 'ntu120', '--protocol', 'oneshot'),
}


@pytest.mark.parametrize('protocol', list(PROTOCOLS))
def test_stop_and_resume_equals_uninterrupted(tmp_path, protocol):
    """--stop-after 2 then --resume auto ends with the uninterrupted run's logits, bit for bit."""
    write_encoded(str(tmp_path / 'data'), num_classes=4)
    write_encoded(str(tmp_path / 'data'), data='ntu120', num_classes=12, train_per_class=6, test_per_class=4)
    torch.manual_seed(5)
    pretrain.save_encoder(str(tmp_path / 'other.pth'), common.build_encoder('vit_test', img_size=64), {})
    flags = [str(tmp_path / 'other.pth') if f == 'TRANSFER' else f for f in PROTOCOLS[protocol]]
    flags += ['--epochs', '4', '--eval-every', '3', '--save-every', '1']
    finetune.main(make_args(tmp_path, *flags, '--output-dir', str(tmp_path / 'straight')))
    finetune.main(make_args(tmp_path, *flags, '--stop-after', '2', '--output-dir', str(tmp_path / 'split')))
    assert [r['epoch'] for r in read_log(tmp_path / 'split')] == [0, 1]
    finetune.main(make_args(tmp_path, *flags, '--resume', 'auto', '--output-dir', str(tmp_path / 'split')))
    straight, resumed = read_log(tmp_path / 'straight'), read_log(tmp_path / 'split')
    assert [r['epoch'] for r in resumed] == [0, 1, 2, 3]
    assert [r['loss'] for r in resumed] == [r['loss'] for r in straight]
    logits = np.load(tmp_path / 'straight' / 'test_logits.npy')
    assert np.array_equal(np.load(tmp_path / 'split' / 'test_logits.npy'), logits)
    a = torch.load(tmp_path / 'straight' / 'checkpoint.pth', weights_only=True)['model']
    b = torch.load(tmp_path / 'split' / 'checkpoint.pth', weights_only=True)['model']
    assert all(torch.equal(value, b[name]) for name, value in a.items())


@pytest.mark.parametrize('protocol', ['full', 'one-shot'])
def test_eval_scores_a_checkpoint_as_its_last_epoch(tmp_path, protocol):
    """--eval --resume RUN/checkpoint.pth: the run's last-epoch logits and result again, bit for bit,
    written elsewhere without training; and the same checkpoint scored on another protocol's test split."""
    write_encoded(str(tmp_path / 'data'), num_classes=4)
    write_encoded(str(tmp_path / 'data'), protocol='xview', num_classes=4, test_per_class=5, seed=7)
    write_encoded(str(tmp_path / 'data'), data='ntu120', num_classes=12, train_per_class=6, test_per_class=4)
    flags = [*PROTOCOLS[protocol], '--epochs', '2', '--save-every', '1']
    finetune.main(make_args(tmp_path, *flags))
    run, scored = tmp_path / 'run', tmp_path / 'scored'
    scoring = ['--eval', '--resume', str(run / 'checkpoint.pth'), '--epochs', '100']
    finetune.main(make_args(tmp_path, *flags, *scoring, '--output-dir', str(scored)))
    assert np.array_equal(np.load(scored / 'test_logits.npy'), np.load(run / 'test_logits.npy'))
    assert (scored / 'test_names.txt').read_bytes() == (run / 'test_names.txt').read_bytes()
    ran, again = (json.loads((folder / 'result.json').read_text()) for folder in (run, scored))
    for key in ('top1', 'top5', 'mean_class_accuracy', 'per_class', 'epoch', 'epochs'):
        assert again[key] == ran[key], key
    assert (scored / 'confusion.png').is_file() and len(read_log(run)) == 2
    if protocol == 'full':                                                 # another protocol of the same classes
        other = tmp_path / 'xview'
        finetune.main(finetune.get_args(stage_args(tmp_path / 'data', '--batch-size', '16', *scoring, '--protocol', 'xview',
                                                   '--output-dir', str(other))))          # no --init: the checkpoint's
        assert json.loads((other / 'result.json').read_text())['protocol'] == 'xview'
        assert np.load(other / 'test_logits.npy').shape == (20, 4)
        write_encoded(str(tmp_path / 'data'), data='other', num_classes=4, seed=9)      # 4 classes too, but others
        with pytest.raises(SystemExit, match='was trained on --data synthetic'):
            finetune.main(finetune.get_args(stage_args(tmp_path / 'data', '--batch-size', '16', *scoring, '--data', 'other',
                                                       '--output-dir', str(tmp_path / 'elsewhere'))))


def test_killed_and_resumed_equals_uninterrupted(tmp_path):
    """SIGKILL twice mid-epoch (a step line printed), --resume auto each time: the same logits as one run."""
    from killing import run_with_kills
    write_encoded(str(tmp_path / 'data'), num_classes=4)
    argv = train_args(tmp_path, '--epochs', '5', '--save-every', '1', '--print-every', '1')
    finetune.main(finetune.get_args(argv + ['--output-dir', str(tmp_path / 'straight')]))
    run_with_kills(os.path.join(ROOT, 'finetune.py'), argv + ['--output-dir', str(tmp_path / 'killed')], [6, 3])
    assert [r['epoch'] for r in read_log(tmp_path / 'killed')] == list(range(5))
    assert np.array_equal(np.load(tmp_path / 'killed' / 'test_logits.npy'), np.load(tmp_path / 'straight' / 'test_logits.npy'))


@pytest.mark.parametrize('protocol', ['full', 'oneshot'])
def test_two_processes_match_one(tmp_path, protocol):
    """torchrun --nproc_per_node 2 (gloo) trains as one process with the same global batch, up to
    rounding: augmentation and drop path (0.1 here) are drawn for the global batch, and one-shot's
    contrastive loss is taken over the gathered global batch of pairs."""
    data = ['--data', 'ntu120', '--protocol', 'oneshot'] if protocol == 'oneshot' else []
    write_encoded(str(tmp_path / 'data'), num_classes=12 if data else 4, **(dict(data='ntu120', train_per_class=6, test_per_class=4) if data else {}))
    argv = train_args(tmp_path, '--epochs', '2', '--drop-path', '0.1', '--print-every', '0', *data)
    finetune.main(finetune.get_args(argv + ['--output-dir', str(tmp_path / 'one')]))
    run = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                          os.path.join(ROOT, 'finetune.py'), *argv, '--output-dir', str(tmp_path / 'two')],
                         env=dict(os.environ, OMP_NUM_THREADS='1'), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    one, two = read_log(tmp_path / 'one'), read_log(tmp_path / 'two')
    assert np.allclose([r['loss'] for r in one], [r['loss'] for r in two], rtol=1e-4, atol=0)
    logits, two_logits = np.load(tmp_path / 'one' / 'test_logits.npy'), np.load(tmp_path / 'two' / 'test_logits.npy')
    if protocol == 'full':
        np.testing.assert_allclose(two_logits, logits, rtol=1e-3, atol=1e-4)
        assert logits.std() > 0.01
    else:                                          # cosine similarities, all near 1 after 2 epochs: vs their spread
        spread = logits.max() - logits.min()
        assert spread > 1e-4 and np.abs(two_logits - logits).max() < 0.05 * spread


def test_bf16_autocast_and_compile_on_the_cpu(tmp_path, monkeypatch):
    """The CUDA paths run on the CPU: --precision bf16 trains under autocast (other logits than
    float32, within bf16 rounding of them), and --compile gives float32's logits bit for bit and a
    checkpoint in plain key names. torch.compile runs with the aot_eager backend here: inductor's
    C++ build works on the CPU too but takes minutes for vit_test."""
    write_encoded(str(tmp_path / 'data'), num_classes=4)
    compiled = []
    compile_ = torch.compile
    monkeypatch.setattr(torch, 'compile', lambda model: compiled.append(model) or compile_(model, backend='aot_eager'))
    runs = {'fp32': (), 'bf16': ('--precision', 'bf16'), 'compile': ('--compile',)}
    for name, flags in runs.items():
        finetune.main(make_args(tmp_path, '--epochs', '2', *flags, '--output-dir', str(tmp_path / name)))
    assert len(compiled) == 1
    logits = {name: np.load(tmp_path / name / 'test_logits.npy') for name in runs}
    assert np.array_equal(logits['compile'], logits['fp32'])
    assert not np.array_equal(logits['bf16'], logits['fp32'])
    scale = np.abs(logits['fp32']).max()
    assert scale > 0.01 and np.abs(logits['bf16'] - logits['fp32']).max() < 0.1 * scale
    state = torch.load(tmp_path / 'compile' / 'checkpoint.pth', weights_only=True)['model']
    assert 'cls_token' in state and not any(key.startswith('_orig_mod.') for key in state)


def test_drop_path_is_drawn_for_the_global_batch():
    """Rank 1 of 2 drops exactly the paths that one process drops for rows 1::2 of the same batch."""
    torch.manual_seed(0)
    args = finetune.get_args(['--model', 'vit_test', '--init', 'none', '--drop-path', '0.5'])
    one = finetune.build_model(args, 32, num_classes=3)
    two = finetune.build_model(args, 32, num_classes=3)
    two.load_state_dict(one.state_dict())
    finetune.drop_path_over_global_batch(one, 0, 1)
    finetune.drop_path_over_global_batch(two, 1, 2)
    images = torch.randn(8, 3, 32, 32)
    with common.seeded(3, torch.device('cpu')):
        full = one.train().forward_features(images)                    # (8, 1 + L, D), values of order 1
    with common.seeded(3, torch.device('cpu')):
        rank1 = two.train().forward_features(images[1::2])
    assert torch.allclose(full[1::2], rank1, rtol=0, atol=1e-5)
    with common.seeded(4, torch.device('cpu')):
        other = one.forward_features(images)
    changed = (full - other).abs().amax(dim=(1, 2)) > 0.1              # (8,): block 1's 2 DropPaths at p 0.5
    assert changed.sum() >= 4                                          # another seed: other paths (expected 3/4)
    assert torch.equal(one.eval().forward_features(images), one.forward_features(images))   # none in eval mode
