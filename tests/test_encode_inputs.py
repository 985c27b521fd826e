"""encode.py on inputs that used to be misread in silence: each is read correctly, or stops with one
line naming the file or flag, what was found and the fix, and writes nothing. Also the score channel
of 2D formats, which no step may move."""
import argparse
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
import encode
from fixtures import real_data
from test_encode import TRI3_YAML  # a made-up 3-joint format


def run(argv):
    return encode.main(encode.get_args([str(a) for a in argv] + ['--quiet']))


def skeletons(n=10, t=6, joints=25, seed=0):
    """(N, T, V, 3) in metres: a body 3 m from the camera, moving a little."""
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 0.3, (n, t, joints, 3)) + [0, 0.5, 3.0]).astype(np.float32)


# ------------------------------------------------------------------ read correctly

def test_st_gcn_nctvm_arrays_and_label_pickle_read_as_ntvc(tmp_path):
    """ST-GCN / CTR-GCN (N, C, T, V, M) arrays with their (names, labels) pickle give the images of
    the same data as (N, T, V, C) with an .npy of labels, and keep the sample names."""
    x = skeletons()
    np.save(tmp_path / 'ntvc.npy', x)
    nctvm = np.zeros((10, 3, 6, 25, 2), np.float32)
    nctvm[..., 0] = x.transpose(0, 3, 1, 2)
    np.save(tmp_path / 'train_data_joint.npy', nctvm)
    labels = np.arange(10) % 4
    np.save(tmp_path / 'y.npy', labels)
    names = [f'S001C001P001R001A{k:03d}.skeleton' for k in range(1, 11)]
    with open(tmp_path / 'train_label.pkl', 'wb') as f:
        pickle.dump((names, list(labels)), f)
    np.save(tmp_path / 'split.npy', np.array(['train'] * 7 + ['test'] * 3))
    common = ['--data', 'npy', '--format', 'ntu25', '--split', tmp_path / 'split.npy', '--size', 16, '--out', tmp_path]
    run(common + ['--input', tmp_path / 'ntvc.npy', '--labels', tmp_path / 'y.npy', '--name', 'ntvc'])
    meta = run(common + ['--input', tmp_path / 'train_data_joint.npy', '--labels', tmp_path / 'train_label.pkl',
                         '--trust-pickle', '--name', 'nctvm'])
    assert meta['counts'] == dict(train=7, test=3)
    a, b = tmp_path / 'ntvc' / 'default', tmp_path / 'nctvm' / 'default'
    for f in ['train_joint.npy', 'test_motion.npy', 'train_labels.npy']:
        np.testing.assert_array_equal(np.load(a / f), np.load(b / f))
    assert (b / 'test_names.txt').read_text().split() == [n.split('.')[0] for n in names[7:]]
    assert (a / 'test_names.txt').read_text().split() == ['000007', '000008', '000009']


def test_npy_names_label_offset_and_split_rule(tmp_path, capsys):
    x = skeletons()
    np.save(tmp_path / 'x.npy', x)
    np.save(tmp_path / 'y.npy', np.arange(10) % 3 + 1)                   # 1-based
    (tmp_path / 'names.txt').write_text(''.join(f'clip{k}\n' for k in range(10)))
    meta = encode.main(encode.get_args(['--data', 'npy', '--input', str(tmp_path / 'x.npy'), '--labels',
                                        str(tmp_path / 'y.npy'), '--format', 'ntu25', '--label-offset', '-1',
                                        '--names', str(tmp_path / 'names.txt'), '--size', '16',
                                        '--out', str(tmp_path), '--modality', 'joint']))
    d = tmp_path / 'npy' / 'default'
    assert np.load(d / 'train_labels.npy').tolist() == [0, 1, 2, 0, 2, 0, 1, 2]
    assert (d / 'test_names.txt').read_text().split() == ['clip4', 'clip9']
    assert meta['num_classes'] == 3
    rule = 'no --split: every 5th sample (index % 5 == 4) is test'
    assert rule in meta['warnings'] and rule in capsys.readouterr().err


def test_npz_one_hot_width_and_class_without_training_sample(tmp_path, capsys):
    x = np.zeros((4, 8, 150), np.float32)
    x[:, :, :75] = skeletons(4, 8).reshape(4, 8, 75)
    np.savez(tmp_path / 'sub.npz', x_train=x[:3], y_train=np.eye(6)[[0, 1, 2]], x_test=x[3:], y_test=np.eye(6)[[4]])
    meta = encode.main(encode.get_args(['--data', 'npz', '--input', str(tmp_path / 'sub.npz'), '--format', 'ntu25',
                                        '--size', '16', '--out', str(tmp_path), '--modality', 'joint']))
    assert meta['num_classes'] == 6                            # the one-hot width, not the highest label + 1
    warning = '3 of 6 classes have no training sample: [3, 4, 5]'
    assert warning in meta['warnings'] and warning in capsys.readouterr().err


def test_millimetres_warned_and_scaled(tmp_path):
    x = skeletons()
    np.save(tmp_path / 'm.npy', x)
    np.save(tmp_path / 'mm.npy', x * 1000)
    np.save(tmp_path / 'y.npy', np.arange(10) % 2)
    common = ['--data', 'npy', '--labels', tmp_path / 'y.npy', '--format', 'ntu25', '--size', 16, '--out', tmp_path,
              '--modality', 'joint']
    metres = run(common + ['--input', tmp_path / 'm.npy', '--name', 'm'])
    mm = run(common + ['--input', tmp_path / 'mm.npy', '--name', 'mm'])
    scaled = run(common + ['--input', tmp_path / 'mm.npy', '--name', 'scaled', '--scale-coords', 0.001])
    assert not any('millimetres' in w for w in metres['warnings'] + scaled['warnings'])
    assert any('looks like millimetres' in w and '--scale-coords 0.001' in w for w in mm['warnings'])
    np.testing.assert_allclose(np.load(tmp_path / 'scaled' / 'default' / 'train_joint.npy').astype(np.float32),
                               np.load(tmp_path / 'm' / 'default' / 'train_joint.npy').astype(np.float32), atol=2e-3)


def test_joints_file_adds_and_overrides(tmp_path):
    head = encode.get_format('ntu25')['joints'].index('head')
    override = encode.yaml.safe_load((REPO / 'joints.yaml').read_text())['ntu25']
    override['centre'] = ['head']
    path = tmp_path / 'mine.yaml'
    path.write_text(TRI3_YAML + encode.yaml.safe_dump({'ntu25': override}, sort_keys=False))
    formats = encode.load_formats(path)
    assert formats['tri3']['num_joints'] == 3                          # added
    assert formats['ntu25']['centre_idx'].tolist() == [head]           # replaced
    assert formats['ucla20']['num_joints'] == 20                       # the rest of joints.yaml is kept


# ------------------------------------------------------------------ the score channel of 2D formats

def test_score_channel_is_never_moved():
    """(x, y, score): centring, --scale-coords, bone and motion differences and every augmentation of
    the training stages (common.augment, skeleton space, as pretrain/probe/finetune call it) leave
    the score channel as S2I maps it from the input."""
    rng = np.random.default_rng(1)
    x = rng.normal(200, 50, (1, 6, 17, 3)).astype(np.float32)           # pixels
    x[..., 2] = rng.uniform(0.2, 1.0, (1, 6, 17))                      # scores
    expected = encode.s2i(x[0], 'coco17', 16)[2]
    images = encode.encode_sequence(x, 'coco17', encode.MODALITIES, 16, scale=0.01)
    for m, image in images.items():
        np.testing.assert_array_equal(image[2], expected)
    assert abs(images['joint'][0]).max() < 5                           # x was centred and scaled
    import torch
    import common
    # --flip x-only: the mirror flip moves each score to its partner's column (test_common's mirror tests)
    aug = argparse.Namespace(aug_space='skeleton', flip='x-only', flip_prob=1.0, rotate=30.0, scale=0.3, translate=0.3,
                             noise_std=0.1)
    for m, image in images.items():
        batch = torch.from_numpy(np.stack([image] * 4))
        out = common.augment(batch, m, aug, planar=True)
        torch.testing.assert_close(out[:, 2], batch[:, 2], rtol=0, atol=0)
        assert not torch.equal(out[:, 0], batch[:, 0])                 # x was augmented


# ------------------------------------------------------------------ one line, no output

def write_cases(tmp):
    """name -> (argv, words the one line must hold). Inputs are written here."""
    x = skeletons()
    np.save(tmp / 'x.npy', x)
    np.save(tmp / 'y.npy', np.arange(10) % 3)
    np.save(tmp / 'y1.npy', np.arange(10) % 3 + 1)
    np.save(tmp / 'yneg.npy', np.arange(10) % 3 - 1)
    np.save(tmp / 'yhalf.npy', np.arange(10) / 2)
    np.save(tmp / 'val.npy', np.array(['train', 'test', 'val', 'train', 'test'] * 2))
    np.save(tmp / 'xy.npy', x[..., :2])
    flat = x.copy()
    flat[..., 2] = 0
    np.save(tmp / 'flat.npy', flat)
    np.save(tmp / 'ambiguous.npy', np.zeros((4, 3, 6, 17, 2), np.float32))   # NCTVM of 3 channels or NMTVC of 3 people
    np.savez(tmp / 'x.npz', x_train=x, y_train=np.eye(3)[np.arange(10) % 3])
    with open(tmp / 'label.pkl', 'wb') as f:
        pickle.dump((['a'] * 10, [0] * 10), f)
    (tmp / 'two_names.txt').write_text('a\nb\n')
    ucla = tmp / 'ucla'
    ucla.mkdir()
    for v in (1, 3):
        (ucla / f'a01_s01_e00_v0{v}.json').write_text(json.dumps(dict(label=11 if v == 3 else 1, skeletons=x[0, :, :20].tolist())))
    np.savez(tmp / 'arrays.npz', x=x[:, :, :20], labels=np.arange(10) % 3, split=np.array(['train', 'test'] * 5),
             format='msr20')
    np.savez(tmp / 'nosplit.npz', x=x[:, :, :20], labels=np.arange(10) % 3)
    np.savez(tmp / 'both.npz', x=x[:, :, :20], labels=np.arange(10) % 3, split=np.zeros(10), x_train=x,
             y_train=np.eye(3)[np.arange(10) % 3], x_test=x, y_test=np.eye(3)[np.arange(10) % 3])
    npy = ['--data', 'npy', '--input', tmp / 'x.npy', '--labels', tmp / 'y.npy', '--format', 'ntu25']
    arrays = ['--data', 'npz', '--input', tmp / 'arrays.npz']
    return {
        'arrays npz of another format': (arrays + ['--format', 'ucla20'], ['arrays.npz', "format 'msr20'", '--format msr20']),
        'arrays npz without split': (['--data', 'npz', '--input', tmp / 'nosplit.npz', '--format', 'msr20'],
                                     ['nosplit.npz', "no 'split'"]),
        'npz of both layouts': (['--data', 'npz', '--input', tmp / 'both.npz', '--format', 'msr20'],
                                ['both.npz', "both 'x'", "'x_train'"]),
        '1-based labels': (npy[:5] + [tmp / 'y1.npy', '--format', 'ntu25'], ['y1.npy', 'no label is 0', '1, 2, 3', '--label-offset -1']),
        'negative labels': (npy[:5] + [tmp / 'yneg.npy', '--format', 'ntu25'], ['yneg.npy', 'negative labels', '-1, 0, 1']),
        'non-integer labels': (npy[:5] + [tmp / 'yhalf.npy', '--format', 'ntu25'], ['yhalf.npy', 'must be integers', '0.5']),
        'split val': (npy + ['--split', tmp / 'val.npy'], ['val.npy', 'split values', 'val', "'train' and 'test'"]),
        '3D format, 2 channels': (npy[:3] + [tmp / 'xy.npy'] + npy[4:], ['xy.npy', '2 channels', '3D', 'x, y, score']),
        'z all zero': (npy[:3] + [tmp / 'flat.npy'] + npy[4:], ['flat.npy', 'channel z', 'constant', '2D data']),
        'ambiguous layout': (npy[:3] + [tmp / 'ambiguous.npy', '--labels', tmp / 'y.npy', '--format', 'coco17'],
                             ['ambiguous.npy', 'NMTVC and NCTVM', '--layout']),
        'layout of wrong rank': (npy + ['--layout', 'NCTVM'], ['--layout NCTVM', 'NTVC (4 axes)']),
        'npz given to npy': (npy[:3] + [tmp / 'x.npz'] + npy[4:], ['x.npz', '.npz archive', '--data npz']),
        'label pickle untrusted': (npy[:5] + [tmp / 'label.pkl', '--format', 'ntu25'], ['label.pkl', '--trust-pickle']),
        'names count': (npy + ['--names', tmp / 'two_names.txt'], ['two_names.txt', '2 names, expected 10']),
        'ucla label 11': (['--data', 'ucla', '--root', ucla, '--strict'], ['a01_s01_e00_v03.json', 'label 11', '1..10']),
        'size below a patch': (npy + ['--size', '8'], ['--size 8', '16 x 16']),
        'size zero': (npy + ['--size', '0'], ['--size 0', 'patch']),
        'size negative': (npy + ['--size', '-16'], ['--size -16', 'patch']),
    }


def test_bad_inputs_one_line_and_no_output(tmp_path):
    cases = write_cases(tmp_path)
    failed = []
    for name, (argv, words) in cases.items():
        out = tmp_path / 'out'
        r = subprocess.run([sys.executable, str(REPO / 'encode.py')] + [str(a) for a in argv] + ['--out', str(out)],
                           capture_output=True, text=True, cwd=tmp_path)
        lines = r.stderr.strip().splitlines()
        ok = r.returncode != 0 and len(lines) == 1 and 'Traceback' not in r.stderr and not out.exists() \
            and all(w in lines[0] for w in words)
        if not ok:
            failed.append(f'{name}: rc {r.returncode}, out written: {out.exists()}, stderr: {r.stderr[-600:]!r}')
    assert not failed, '\n'.join(failed)


def test_other_datasets_output_is_not_overwritten(tmp_path):
    """Two generic inputs without --name both land in OUT/npy/default/: the second stops, the first
    stays whole; --overwrite replaces it; the same input again just re-encodes."""
    x = skeletons()
    np.save(tmp_path / 'a.npy', x)
    np.save(tmp_path / 'b.npy', x[::-1].copy())
    np.save(tmp_path / 'y.npy', np.arange(10) % 2)
    common = ['--data', 'npy', '--labels', tmp_path / 'y.npy', '--format', 'ntu25', '--size', 16, '--out', tmp_path / 'out',
              '--modality', 'joint']
    run(common + ['--input', tmp_path / 'a.npy'])
    d = tmp_path / 'out' / 'npy' / 'default'
    before = {f.name: f.read_bytes() for f in d.iterdir()}
    r = subprocess.run([sys.executable, str(REPO / 'encode.py')] + [str(a) for a in common + ['--input', tmp_path / 'b.npy']],
                       capture_output=True, text=True)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and 'Traceback' not in r.stderr
    assert 'holds the output of --data npy' in r.stderr and 'a.npy' in r.stderr and '--overwrite' in r.stderr
    assert {f.name: f.read_bytes() for f in d.iterdir()} == before
    run(common + ['--input', tmp_path / 'a.npy'])               # the same input: no question asked
    meta = run(common + ['--input', tmp_path / 'b.npy', '--overwrite'])
    assert meta['input'] == str((tmp_path / 'b.npy').resolve())


# ------------------------------------------------------------------ MSR Action3D (msr20) through the generic route

UCLA_TO_MSR = [4, 8, 2, 1, 12, 16, 0, 5, 9, 6, 10, 7, 11, 13, 17, 14, 18, 15, 19, 3]   # msr20 joint k = ucla20 joint


def test_msr20_is_ucla20_in_another_joint_order():
    """Both formats name the same twenty joints: the same pose, stored in either order, gives the
    same image in every stream (parts, bones, flip pairs and centre agree)."""
    formats = encode.load_formats()
    msr, ucla = formats['msr20'], formats['ucla20']
    assert [msr['joints'][k] for k in range(20)] == [ucla['joints'][j] for j in UCLA_TO_MSR]
    assert msr['joints'][19] == 'head' and msr['joints'][6] == 'base_of_spine'       # README: 20 head, 7 hip centre
    pose = skeletons(1, 9, joints=20)[0]                                               # (T, 20, 3), ucla20 order
    in_ucla = encode.encode_sequence(pose, 'ucla20', size=32)
    in_msr = encode.encode_sequence(pose[:, UCLA_TO_MSR], 'msr20', size=32)
    for stream in ('joint', 'bone', 'motion'):
        np.testing.assert_array_equal(in_msr[stream], in_ucla[stream])
    flips = {tuple(sorted((msr['joints'][i], msr['joints'][j]))) for i, j in enumerate(msr['partner'])}
    assert flips == {tuple(sorted((ucla['joints'][i], ucla['joints'][j]))) for i, j in enumerate(ucla['partner'])}
    assert msr['mirror'] == ucla['mirror']                                            # the same image columns


def test_npz_of_named_arrays(tmp_path):
    """x (N, T, V, C) zero-padded past lengths, labels, split, names, class_names, format: names and
    labels kept in order, the class count is class_names' length, padding never reaches the image."""
    x = np.zeros((5, 12, 20, 3), np.float32)
    lengths = np.array([12, 7, 9, 5, 12], np.int32)
    for i, n in enumerate(lengths):
        x[i, :n] = skeletons(1, n, joints=20, seed=i)[0]
    x[1, 10] = 5.0                                                  # junk past a length: must be cut, not read
    names = np.array(['a01_s01', 'a02_s02', 'a01_s03', 'a03_s04', 'a02_s05'])
    np.savez_compressed(tmp_path / 'set.npz', x=x, lengths=lengths, labels=np.array([0, 1, 0, 2, 1]),
                        split=np.array(['train', 'test', 'train', 'test', 'train']), names=names,
                        class_names=np.array(['wave', 'punch', 'kick', 'clap']), format='msr20')
    meta = run(['--data', 'npz', '--input', tmp_path / 'set.npz', '--format', 'msr20', '--name', 'msr20',
                '--protocol', 'xsub', '--size', '16', '--out', tmp_path / 'out', '--modality', 'joint'])
    out = tmp_path / 'out' / 'msr20' / 'xsub'
    assert meta['num_classes'] == 4 and meta['class_names'] == ['wave', 'punch', 'kick', 'clap']
    assert meta['counts'] == {'train': 3, 'test': 2}
    assert (out / 'train_names.txt').read_text().split() == ['a01_s01', 'a01_s03', 'a02_s05']
    assert (out / 'test_names.txt').read_text().split() == ['a02_s02', 'a03_s04']
    assert np.load(out / 'test_labels.npy').tolist() == [1, 2]
    expected = encode.encode_sequence(x[1, :7], 'msr20', ('joint',), size=16)['joint']
    np.testing.assert_allclose(np.load(out / 'test_joint.npy')[0], expected, atol=2e-3)   # float16 store


MSR_REAL = real_data('msr_action3d', 'msr_action3d.npz')


@pytest.mark.skipif(MSR_REAL is None, reason='MSR Action3D not found: set S2I_DATA to the folder holding msr_action3d/')
def test_real_msr_action3d(tmp_path):
    meta = run(['--data', 'npz', '--input', MSR_REAL, '--format', 'msr20', '--name', 'msr20', '--protocol', 'xsub',
                '--size', '32', '--out', tmp_path, '--modality', 'joint'])
    assert meta['counts'] == {'train': 291, 'test': 275} and meta['num_classes'] == 20   # README: odd subjects train
    assert meta['class_names'][0] == 'high arm wave' and meta['class_names'][19] == 'pickup and throw'
    names = (tmp_path / 'msr20' / 'xsub' / 'train_names.txt').read_text().split()
    assert len(names) == 291 and all(int(n.split('_')[1][1:]) % 2 == 1 for n in names)
