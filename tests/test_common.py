"""common.py: the reader, augmentation, schedule, optimiser groups and metrics the stages share."""
import argparse
import errno
import json
import math
import os
import time

import numpy as np
import pytest
import torch

import common
import encode
from fixtures import write_encoded

torch.set_num_threads(1)


def augment_args(**overrides):
    args = dict(aug_space='skeleton', flip='mirror', flip_prob=0.0, rotate=0.0, scale=0.0, translate=0.0, noise_std=0.0)
    args.update(overrides)
    return argparse.Namespace(**args)


def test_rotations_are_proper_and_bounded():
    torch.manual_seed(0)
    rotation = common.random_rotation(64, 15.0, planar=False, device='cpu')           # (64, 3, 3)
    eye = torch.eye(3).expand(64, 3, 3)
    assert torch.allclose(rotation @ rotation.transpose(1, 2), eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(rotation), torch.ones(64), atol=1e-5)
    # each elementary angle is at most 15 degrees, so the total rotation is at most 3 x 15
    total_angle = torch.arccos(((rotation.diagonal(dim1=1, dim2=2).sum(1) - 1) / 2).clamp(-1, 1))
    assert total_angle.max() <= math.radians(45) + 1e-4
    planar = common.random_rotation(16, 15.0, planar=True, device='cpu')
    assert torch.allclose(planar[:, 2], torch.tensor([0.0, 0.0, 1.0]).expand(16, 3))


def test_skeleton_flip_x_only_negates_x_and_keeps_the_columns():
    images = torch.randn(4, 3, 8, 8)
    out = common.augment(images, 'joint', augment_args(flip='x-only', flip_prob=1.0))
    assert torch.equal(out[:, 0], -images[:, 0])
    assert torch.equal(out[:, 1:], images[:, 1:])


def mirrored(bodies, fmt):
    """The skeletons seen in a mirror: x negated (the score of 2D keypoints kept), every joint's
    coordinates moved to its left/right partner."""
    fmt = encode.get_format(fmt)
    out = bodies[..., fmt['partner'], :].copy()
    out[..., 0] *= -1
    return out


@pytest.mark.parametrize('fmt, rescale, people', [('ntu25', 'none', 2), ('ucla20', 'minmax', 1), ('coco17', 'none', 1)])
def test_mirror_flip_is_encoding_the_mirrored_skeleton(fmt, rescale, people):
    """A 3D format (two people), NW-UCLA's min-max rescaling and a 2D one: flipping the encoded image of
    every stream equals encoding the mirrored skeleton, to float precision."""
    rng = np.random.default_rng(3)
    bodies = rng.normal(0, 0.5, (people, 11, encode.get_format(fmt)['num_joints'], 3)).astype(np.float32)
    if fmt == 'coco17':
        bodies[..., :2] = bodies[..., :2] * 100 + 300                       # pixels
        bodies[..., 2] = rng.uniform(0.2, 1.0, bodies.shape[:-1])          # scores
    size = 40
    images = encode.encode_sequence(bodies, fmt, size=size, rescale=rescale)
    expected = encode.encode_sequence(mirrored(bodies, fmt), fmt, size=size, rescale=rescale)
    mirror = common.mirror_matrix(encode.get_format(fmt)['mirror'], size)
    planar = fmt == 'coco17'
    for stream, image in images.items():
        out = common.augment(torch.from_numpy(np.stack([image] * 2)), stream, augment_args(flip_prob=1.0), planar, mirror)
        torch.testing.assert_close(out, torch.from_numpy(np.stack([expected[stream]] * 2)), rtol=2e-6, atol=2e-5)
        assert not torch.allclose(out[:, 1:], torch.from_numpy(image[1:]), atol=1e-2)   # y (and z) moved columns
    assert not np.allclose(images['joint'], expected['joint'] * [[[-1]], [[1]], [[1]]], atol=1e-2)  # not x alone


def test_mirror_flip_picks_each_datasets_matrix_and_refuses_without_pairs():
    """Universal pretraining mixes formats in a batch: each row is flipped with its own dataset's map
    (prepare_batch finds it from the row's position); a format without flip_pairs stops with one line."""
    size, args = 32, augment_args(flip_prob=1.0)
    metas = [dict(dataset=name, protocol='p', format=fmt, size=size, mirror=encode.get_format(fmt)['mirror'])
             for name, fmt in (('a', 'ntu25'), ('b', 'ucla20'))]
    geometry = common.skeleton_geometry(metas, args, torch.device('cpu'), starts=(0, 3))
    images = torch.randn(5, 3, size, size)
    positions = torch.tensor([4, 0, 3, 2, 1])                             # rows 0, 2 from dataset b
    batch = (images.half(), torch.zeros(5, dtype=torch.long), positions)
    out = common.prepare_batch(batch, 'cpu', torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1), 'bone', args, geometry, True)[0]
    flipped = images.half().float()
    flipped[:, 0] *= -1
    for row, fmt in enumerate(['ucla20', 'ntu25', 'ucla20', 'ntu25', 'ntu25']):
        torch.testing.assert_close(out[row], flipped[row] @ common.mirror_matrix(encode.get_format(fmt)['mirror'], size))
    with pytest.raises(SystemExit, match=r'--flip mirror: a/p \(ntu25\): meta.json names no left/right joints'):
        common.skeleton_geometry([dict(metas[0], mirror=None)], args, 'cpu')
    with pytest.raises(SystemExit, match='fewer columns than its 25 joints'):
        common.skeleton_geometry([dict(metas[0], size=16)], args, 'cpu')
    x_only = augment_args(flip='x-only', flip_prob=1.0)
    assert common.skeleton_geometry([dict(metas[0], mirror=None)], x_only, 'cpu')['mirrors'] is None


def test_skeleton_rotation_acts_on_channels_of_every_pixel():
    """Rotating coordinates keeps each pixel's vector length and is the same map for every pixel."""
    torch.manual_seed(1)
    images = torch.randn(2, 3, 6, 6)
    out = common.augment(images, 'bone', augment_args(rotate=30.0))
    assert torch.allclose(out.norm(dim=1), images.norm(dim=1), atol=1e-5)
    for n in range(2):
        pixels, rotated = images[n].reshape(3, -1), out[n].reshape(3, -1)           # (3, P)
        matrix = rotated @ torch.linalg.pinv(pixels)                                 # one 3x3 for all pixels
        assert torch.allclose(matrix @ pixels, rotated, atol=1e-4)
        assert not torch.allclose(matrix, torch.eye(3), atol=1e-3)


def test_translation_moves_joints_but_not_bones_or_motion():
    torch.manual_seed(2)
    images = torch.randn(3, 3, 5, 5)
    joint = common.augment(images, 'joint', augment_args(translate=0.5))
    shift = joint - images
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-6)   # constant per sample/channel
    assert shift.abs().max() <= 0.5 and shift.abs().max() > 0
    for modality in ('bone', 'motion'):
        assert torch.equal(common.augment(images, modality, augment_args(translate=0.5)), images)


def test_image_space_flip_reverses_the_joint_axis():
    images = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    out = common.augment(images, 'joint', augment_args(aug_space='image', flip_prob=1.0))
    assert torch.allclose(out, images.flip(3), atol=1e-4)


def test_dataset_reads_batches_across_files_in_order(tmp_path):
    write_encoded(tmp_path, data='a', num_classes=2, train_per_class=3, size=16)
    write_encoded(tmp_path, data='b', num_classes=3, train_per_class=2, size=16, seed=5)
    paths, labels = [], []
    for data in ('a', 'b'):
        path, split_labels, _ = common.read_split(tmp_path, data, 'xsub', 'train', 'joint')
        paths.append(path)
        labels.append(split_labels)
    arrays = [np.load(p) for p in paths]
    dataset = common.S2IDataset(paths, labels, subset=[7, 0, 10, 4])
    images, batch_labels, positions = dataset.__getitems__([2, 0, 3])
    # subset positions 2, 0, 3 -> global rows 10, 7, 4 = file b row 4, file b row 1, file a row 4
    assert positions.tolist() == [2, 0, 3]
    assert batch_labels.tolist() == [labels[1][4], labels[1][1], labels[0][4]]
    assert torch.equal(images[0], torch.from_numpy(arrays[1][4]))
    assert torch.equal(images[1], torch.from_numpy(arrays[1][1]))
    assert torch.equal(images[2], torch.from_numpy(arrays[0][4]))


def test_read_split_names_the_missing_file(tmp_path):
    write_encoded(tmp_path, modalities=('joint',))
    with pytest.raises(SystemExit, match='test_bone.npy'):
        common.read_split(tmp_path, 'synthetic', 'xsub', 'test', 'bone')


def test_gather_by_index_restores_dataset_order():
    values = torch.tensor([[3.0], [1.0], [2.0]])
    assert common.gather_by_index(values, torch.tensor([2, 0, 1]), 3).flatten().tolist() == [1.0, 2.0, 3.0]


def test_warmup_then_cosine():
    assert common.lr_at(0, 110, 10, 1.0) == 0.0
    assert common.lr_at(5, 110, 10, 1.0) == pytest.approx(0.5)
    assert common.lr_at(10, 110, 10, 1.0) == pytest.approx(1.0)
    assert common.lr_at(60, 110, 10, 1.0) == pytest.approx(0.5)            # half way down the cosine
    assert common.lr_at(35, 110, 10, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert common.lr_at(110, 110, 10, 1.0, min_lr=0.1) == pytest.approx(0.1)


def test_no_weight_decay_on_norms_biases_tokens_and_positions():
    encoder = common.build_encoder('vit_test', img_size=32)
    groups = common.param_groups(encoder, 0.05)
    names = {id(p): n for n, p in encoder.named_parameters()}
    undecayed = {names[id(p)] for g in groups if g['weight_decay'] == 0 for p in g['params']}
    decayed = {names[id(p)] for g in groups if g['weight_decay'] == 0.05 for p in g['params']}
    assert {'cls_token', 'pos_embed', 'blocks.0.norm1.weight', 'blocks.0.attn.qkv.bias', 'norm.bias'} <= undecayed
    assert {'patch_embed.proj.weight', 'blocks.1.mlp.fc1.weight'} <= decayed
    assert not undecayed & decayed


def test_sincos_position_embedding_layout():
    embed = common.sincos_pos_embed(8, 3, cls_token=True)                    # (1, 1 + 9, 8)
    assert embed.shape == (1, 10, 8)
    assert torch.equal(embed[0, 0], torch.zeros(8))
    # patch (row 1, col 2): first half encodes the column, second half the row: [sin, sin, cos, cos]
    col, row = 2.0, 1.0
    expected = [math.sin(col), math.sin(col / 100), math.cos(col), math.cos(col / 100),
                math.sin(row), math.sin(row / 100), math.cos(row), math.cos(row / 100)]
    assert torch.allclose(embed[0, 1 + 1 * 3 + 2], torch.tensor(expected), atol=1e-6)


def test_accuracy_and_per_class():
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.7, 0.2], [0.6, 0.3, 0.1]])
    labels = torch.tensor([0, 1, 1, 2])
    # top-1 predictions 0, 2, 1, 0 -> 2 of 4 right; top-2 sets {0,1}, {2,1}, {1,2}, {0,1} -> 3 of 4
    assert common.accuracy(logits, labels, ks=(1, 2)) == {'top1': 50.0, 'top2': 75.0}
    assert common.per_class_accuracy(logits.argmax(1), labels, 4) == [100.0, 50.0, 0.0, None]


def test_result_json_holds_top1_top5_and_the_mean_class_accuracy(tmp_path):
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.7, 0.2], [0.6, 0.3, 0.1]])
    labels = [0, 1, 1, 1]                          # predictions 0, 2, 1, 0: class 0 1 of 1, class 1 1 of 3
    args = argparse.Namespace(epochs=1, data='d', protocol='p', modality='joint', model='m', init='none')
    record, best = {'epoch': 0}, {'top1': -1.0, 'epoch': -1}
    common.write_results(str(tmp_path), 0, logits, labels, list('abcd'), 3, record, best, args, {})
    result = json.loads((tmp_path / 'result.json').read_text())
    assert result['top1'] == 50.0 and result['top5'] == 100.0
    assert result['per_class'] == [100.0, pytest.approx(100 / 3), None]
    assert result['mean_class_accuracy'] == pytest.approx((100 + 100 / 3) / 2)   # over the classes present


def test_resume_keeps_this_devices_fused_setting(tmp_path):
    """A checkpoint written with fused AdamW (a GPU run) resumes unfused elsewhere, state intact."""
    weight = torch.nn.Linear(3, 2)
    written = torch.optim.AdamW(weight.parameters(), fused=True)
    weight(torch.ones(1, 3)).sum().backward()
    written.step()
    common.save_checkpoint(str(tmp_path), weight, written, 4, argparse.Namespace(lr=1e-3))
    resumed = torch.optim.AdamW(weight.parameters(), fused=False)
    state = common.restore_checkpoint(str(tmp_path / 'checkpoint.pth'), weight, resumed)
    assert state['epoch'] == 4 and resumed.param_groups[0]['fused'] is False
    exp_avg = resumed.state[weight.weight]['exp_avg']
    assert torch.allclose(exp_avg, written.state[weight.weight]['exp_avg']) and exp_avg.abs().sum() > 0


def test_epoch_record_mean_loss_and_rate():
    started = time.time() - 2.0                                  # an epoch of 2 s
    record = common.epoch_record(3, torch.tensor(6.0), 4, 0.1, 100, started)
    assert record['epoch'] == 3 and record['loss'] == 1.5 and record['lr'] == 0.1
    assert 2.0 <= record['time'] < 2.5 and abs(record['images_per_s'] - 100 / record['time']) < 1e-9


def test_adamw_is_fused_on_the_cpu_and_steps_like_the_plain_one():
    """The fused kernel (CUDA-only before torch 2.4) runs in the CPU tests: same update as for-each AdamW."""
    torch.manual_seed(0)
    fused_model, plain_model = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    plain_model.load_state_dict(fused_model.state_dict())
    initial = fused_model.weight.detach().clone()
    fused = common.adamw(fused_model.parameters(), torch.device('cpu'), lr=0.1, weight_decay=0.05)
    plain = torch.optim.AdamW(plain_model.parameters(), lr=0.1, weight_decay=0.05, foreach=False)
    assert fused.param_groups[0]['fused'] is True
    inputs = torch.randn(8, 5)
    for _ in range(3):
        for model, optimizer in ((fused_model, fused), (plain_model, plain)):
            optimizer.zero_grad()
            model(inputs).square().sum().backward()
            optimizer.step()
    assert (fused_model.weight - initial).abs().min() > 0.1          # every weight moved (3 steps of lr 0.1)
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_atomic_write_keeps_the_previous_file_when_the_disk_is_full(tmp_path):
    """Every final file goes through atomic_write: a write that fails (here ENOSPC half way) ends the
    run with one line, and leaves the previous file as it was and no temporary file."""
    path = tmp_path / 'result.json'
    common.atomic_write(str(path), lambda f: f.write('{"top1": 50.0}'), 'w')

    def full(f):
        f.write('{"top1": 7')
        raise OSError(errno.ENOSPC, 'No space left on device')

    with pytest.raises(SystemExit) as end:
        common.atomic_write(str(path), full, 'w')
    assert str(end.value) == f'{path}: no space left on device while writing it; the previous result.json is intact'
    assert path.read_text() == '{"top1": 50.0}' and os.listdir(tmp_path) == ['result.json']


def test_restart_log_keeps_epochs_before_the_checkpoint_and_drops_a_cut_line(tmp_path):
    log = tmp_path / 'log.jsonl'
    log.write_text('{"epoch": 0, "loss": 2.0}\n{"epoch": 1, "loss": 1.5}\n{"epoch": 2, "loss": 1.2}\n{"epoch": 3, "lo')
    common.restart_log(str(log), 2)                       # resumed at epoch 2: epochs 2 and 3 will be redone
    assert log.read_text() == '{"epoch": 0, "loss": 2.0}\n{"epoch": 1, "loss": 1.5}\n'
    common.restart_log(str(log), 0)                       # a new run starts empty
    assert log.read_text() == ''


def test_pool_reads_the_class_token_or_the_mean_of_the_normed_patch_tokens():
    """--pool: cls (S2I 4.2) or mean of the patch tokens; both after the final norm, same weights."""
    torch.manual_seed(0)
    cls_encoder = common.build_encoder('vit_test', img_size=32, pool='cls')
    mean_encoder = common.build_encoder('vit_test', img_size=32, pool='mean')
    mean_encoder.load_state_dict(cls_encoder.state_dict())                   # same keys: no fc_norm either way
    cls_encoder.eval(), mean_encoder.eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        tokens = cls_encoder.norm(cls_encoder.blocks(cls_encoder._pos_embed(cls_encoder.patch_embed(images))))
        assert tokens.shape == (3, 1 + 4, 32)                                # class token + 2 x 2 patches
        assert torch.allclose(cls_encoder(images), tokens[:, 0], atol=1e-6)
        assert torch.allclose(mean_encoder(images), tokens[:, 1:].mean(1), atol=1e-6)
        assert not torch.allclose(tokens[:, 0], tokens[:, 1:].mean(1), atol=1e-3)
