"""Tests for encode.py: S2I, preprocessing, streams, every reader on a fixture in its official layout,
protocol splits, atomic and bounded-memory output, bad-input messages. Data are made here (tmp_path)."""
import json
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
import encode
from fixtures import real_data

UCLA_REAL = real_data('nw_ucla', 'all_sqe')

TRI3_YAML = """
tri3:
  channels: [x, y, z]
  joints: [a, b, c]
  parts: {spine: [c], left_arm: [a], right_arm: [b], left_leg: [], right_leg: []}
  bones: [[a, a], [b, a], [c, b]]
  flip_pairs: []
  centre: [a]
"""


def run(argv):
    """encode.py in-process, quiet, returns meta.json's dict."""
    return encode.main(encode.get_args(list(map(str, argv)) + ['--quiet']))


def fail(argv):
    with pytest.raises(SystemExit) as e:
        run(argv)
    return str(e.value)


@pytest.fixture
def tri3(tmp_path):
    p = tmp_path / 'tri3.yaml'
    p.write_text(TRI3_YAML)
    return encode.load_formats(p)['tri3'], p


# ------------------------------------------------------------------ joints.yaml / Table 14

def names_in_order(key):
    f = encode.get_format(key)
    return [f['joints'][i] for i in f['order']]


def test_body_part_order_matches_table14():
    ntu = ['head', 'neck', 'spine', 'middle_of_spine', 'base_of_spine',
           'left_shoulder', 'left_elbow', 'left_wrist', 'left_hand', 'left_thumb', 'tip_of_left_hand',
           'right_shoulder', 'right_elbow', 'right_wrist', 'right_hand', 'right_thumb', 'tip_of_right_hand',
           'left_hip', 'left_knee', 'left_ankle', 'left_foot', 'right_hip', 'right_knee', 'right_ankle', 'right_foot']
    assert names_in_order('ntu25') == ntu
    assert [i + 1 for i in encode.get_format('ntu25')['order']] == \
        [4, 3, 21, 2, 1, 5, 6, 7, 8, 23, 22, 9, 10, 11, 12, 25, 24, 13, 14, 15, 16, 17, 18, 19, 20]
    ucla = ['head', 'spine', 'middle_of_spine', 'base_of_spine',
            'left_shoulder', 'left_elbow', 'left_wrist', 'left_hand',
            'right_shoulder', 'right_elbow', 'right_wrist', 'right_hand',
            'left_hip', 'left_knee', 'left_ankle', 'left_foot', 'right_hip', 'right_knee', 'right_ankle', 'right_foot']
    assert names_in_order('ucla20') == ucla
    assert [i + 1 for i in encode.get_format('ucla20')['order']] == [4, 3, 2, 1] + list(range(5, 21))
    toyota = ['head', 'left_shoulder', 'left_elbow', 'left_wrist', 'right_shoulder', 'right_elbow', 'right_wrist',
              'left_hip', 'left_knee', 'left_ankle', 'right_hip', 'right_knee', 'right_ankle']
    assert names_in_order('toyota13') == toyota
    assert list(encode.get_format('toyota13')['order']) == [12, 11, 9, 7, 10, 8, 6, 5, 3, 1, 4, 2, 0]
    # centres: NTU joint 2 (middle of spine), UCLA joint 2, Toyota the two hips
    assert list(encode.get_format('ntu25')['centre_idx']) == [1]
    assert list(encode.get_format('ucla20')['centre_idx']) == [1]
    assert sorted(encode.get_format('toyota13')['centre_idx']) == [4, 5]


def test_every_format_is_a_permutation():
    for key, f in encode.load_formats().items():
        assert sorted(f['order']) == list(range(f['num_joints'])), key
        assert (f['parent'][f['parent']] >= 0).all()


@pytest.mark.parametrize('bad, msg', [
    ('parts: {spine: [c, a], left_arm: [a], right_arm: [b], left_leg: [], right_leg: []}', "joint 'a' is in part spine and in part left_arm"),
    ('parts: {spine: [c], left_arm: [], right_arm: [b], left_leg: [], right_leg: []}', 'joints in no part'),
    ('parts: {spine: [c], left_arm: [a], right_arm: [zz], left_leg: [], right_leg: []}', "unknown joint 'zz'"),
])
def test_yaml_validation(tmp_path, bad, msg):
    p = tmp_path / 'bad.yaml'
    p.write_text(TRI3_YAML.replace(TRI3_YAML.splitlines()[4], '  ' + bad))
    with pytest.raises(encode.EncodeError) as e:
        encode.load_formats(p)
    assert msg in str(e.value) and str(p) in str(e.value)


def test_mirror_columns_swap_each_left_joint_with_its_right_partner(tmp_path):
    # ntu25 in S2I order: spine 0-4, left arm 5-10, right arm 11-16, left leg 17-20, right leg 21-24,
    # each part from the torso outwards, so the mirror swaps whole part blocks
    assert encode.get_format('ntu25')['mirror'] == [*range(5), *range(11, 17), *range(5, 11), *range(21, 25), *range(17, 21)]
    p = tmp_path / 'v3.yaml'               # S2I order c, a, b; a and b are partners
    p.write_text(TRI3_YAML.replace('tri3', 'v3').replace('[[a, a], [b, a], [c, b]]', '[[a, c], [b, c], [c, c]]')
                 .replace('flip_pairs: []', 'flip_pairs: [[a, b]]'))
    assert encode.load_formats(p)['v3']['mirror'] == [0, 2, 1]
    assert encode.load_formats(p)['v3']['partner'].tolist() == [1, 0, 2]
    tri3 = tmp_path / 'tri3.yaml'
    tri3.write_text(TRI3_YAML)
    assert encode.load_formats(tri3)['tri3']['mirror'] is None        # no pairs: no flip


@pytest.mark.parametrize('pairs, msg', [
    ('[[a, b], [b, c]]', 'each in at most one pair'),
    ('[[a, a]]', 'expected two different joints'),
    ('[[a, c]]', 'the mirror of the bones of'),            # a is the root, c a leaf: no mirror image of the chain
])
def test_flip_pairs_validation(tmp_path, pairs, msg):
    p = tmp_path / 'bad.yaml'
    p.write_text(TRI3_YAML.replace('flip_pairs: []', f'flip_pairs: {pairs}'))
    with pytest.raises(encode.EncodeError) as e:
        encode.load_formats(p)
    assert msg in str(e.value) and str(p) in str(e.value)


# ------------------------------------------------------------------ S2I interpolation

def test_interp_matrix_align_corners():
    m = encode.interp_matrix(3, 4)       # output positions 0, 2/3, 4/3, 2
    np.testing.assert_allclose(m, [[1, 0, 0], [1 / 3, 2 / 3, 0], [0, 2 / 3, 1 / 3], [0, 0, 1]], atol=1e-6)
    np.testing.assert_allclose(encode.interp_matrix(1, 3), [[1], [1], [1]])


def test_s2i_hand_computed(tri3):
    fmt, _ = tri3
    # T=2, J=3 in S2I order (c, a, b). Channel 0: a bump in the middle joint of frame 0.
    seq = np.zeros((2, 3, 3), np.float32)
    seq[0, 0, 0] = 10.0                     # joint a is the middle column (order c, a, b)
    seq[:, 1, 1] = [0.0, 12.0]              # channel 1: joint b (last column) goes 0 -> 12 over time
    seq[:, :, 2] = [[1, 2, 3], [4, 5, 6]]   # channel 2 (a, b, c): the image columns (c, a, b) are [[3,1,2],[6,4,5]]
    img = encode.s2i(seq, fmt, size=4)
    assert img.shape == (3, 4, 4) and img.dtype == np.float32
    r = 10 * 2 / 3
    expect0 = np.array([[0, r, r, 0], [0, r * 2 / 3, r * 2 / 3, 0], [0, r / 3, r / 3, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(img[0], expect0, atol=1e-5)
    # channel 1: column 3 (joint b) is 0, 4, 8, 12 down the rows; column 2 (position 4/3) a third of it
    np.testing.assert_allclose(img[1][:, 3], [0, 4, 8, 12], atol=1e-5)
    np.testing.assert_allclose(img[1][:, 2], [0, 4 / 3, 8 / 3, 4], atol=1e-5)
    np.testing.assert_allclose(img[1][:, :2], 0, atol=1e-6)
    # channel 2 in S2I column order (c, a, b) = [[3,1,2],[6,4,5]]: corners exact, axes independent
    ch = img[2]
    assert ch[0, 0] == pytest.approx(3) and ch[0, 3] == pytest.approx(2)
    assert ch[3, 0] == pytest.approx(6) and ch[3, 3] == pytest.approx(5)
    np.testing.assert_allclose(ch[0], [3, 3 - 2 * 2 / 3, 1 + 1 / 3, 2], atol=1e-5)
    np.testing.assert_allclose(ch[:, 0], [3, 4, 5, 6], atol=1e-5)


def test_s2i_single_frame_repeated_and_format_by_name():
    seq = np.random.default_rng(0).normal(size=(1, 25, 3)).astype(np.float32)
    img = encode.s2i(seq, 'ntu25', size=8)
    assert np.allclose(img, img[:, :1, :])
    assert img[0, 0, 0] == pytest.approx(seq[0, 3, 0])      # head first
    assert img[1, 0, 7] == pytest.approx(seq[0, 19, 1])     # right foot last


# ------------------------------------------------------------------ preprocessing and streams

def test_translation_by_first_frame_centre():
    x = np.random.default_rng(1).normal(size=(5, 25, 3)).astype(np.float32)
    x[0] = 0                                                  # a padding frame first: dropped
    out = encode.preprocess(x, 'ntu25')
    assert out.shape == (4, 25, 3)
    np.testing.assert_allclose(out, x[1:] - x[1, 1], atol=1e-6)
    assert np.abs(out[0, 1]).max() < 1e-6


def test_two_person_interleave_concat_first():
    x = np.zeros((2, 3, 25, 3), np.float32)
    for m in range(2):
        for t in range(3):
            x[m, t, 4, 0] = 100 * m + t + 1                  # marker; centre joint stays 0
    x[1, 1] = 0                                               # body 1 absent in frame 1
    order = lambda mode: list(encode.preprocess(x, 'ntu25', mode)[:, 4, 0])  # noqa: E731
    assert order('interleave') == [1, 101, 2, 3, 103]
    assert order('concat') == [1, 2, 3, 101, 103]
    assert order('first') == [1, 2, 3]


def test_bone_and_motion(tri3):
    fmt, _ = tri3
    seq = np.array([[[0, 0, 0], [1, 2, 3], [2, 2, 2]],
                    [[1, 1, 1], [3, 3, 3], [5, 7, 9]]], np.float32)
    s = encode.streams(seq, fmt)
    np.testing.assert_array_equal(s['bone'], [[[0, 0, 0], [1, 2, 3], [1, 0, -1]],
                                              [[0, 0, 0], [2, 2, 2], [2, 4, 6]]])
    np.testing.assert_array_equal(s['motion'], [[[1, 1, 1], [2, 1, 0], [3, 5, 7]],
                                                [[0, 0, 0], [0, 0, 0], [0, 0, 0]]])
    np.testing.assert_array_equal(s['joint'], seq)


# ------------------------------------------------------------------ fixtures in official layouts

def ntu_text(frames):
    """frames: list of lists of (25, 3) arrays -> official .skeleton text."""
    out = [str(len(frames))]
    for bodies in frames:
        out.append(str(len(bodies)))
        for k, b in enumerate(bodies):
            out.append(f'7205759403793{k} 0 1 1 1 1 0 0.1 0.2 2')
            out.append(str(len(b)))
            out += [' '.join(f'{v:.5f}' for v in (*p, 250.1, 200.2, 900.3, 500.4, 0.1, 0.2, 0.3, 0.9)) + ' 2' for p in b]
    return '\n'.join(out) + '\n'


def body(rng, t, scale=1.0):
    return [rng.normal(size=(25, 3)) * scale for _ in range(t)]


def make_ntu(root, rng):
    root.mkdir()
    names = ['S001C001P001R001A001', 'S001C002P003R001A002', 'S002C003P002R002A003', 'S018C001P045R001A061']
    for i, n in enumerate(names):
        b0 = body(rng, 12)                                     # 12 frames: SGN keeps both bodies
        frames = [[b] for b in b0] if i % 2 == 0 else [[a, b] for a, b in zip(b0, body(rng, 12))]
        (root / f'{n}.skeleton').write_text(ntu_text(frames))
    return names


def test_ntu_reader_one_two_three_bodies(tmp_path):
    rng = np.random.default_rng(0)
    one = body(rng, 4)
    p = tmp_path / 'S001C001P001R001A001.skeleton'
    p.write_text(ntu_text([[b] for b in one]))
    x = encode.read_ntu_skeleton(p)                            # SGN: translated by joint 2 of frame 0
    assert x.shape == (1, 4, 25, 3)
    np.testing.assert_allclose(x[0], np.array(one) - one[0][1], atol=1e-4)
    np.testing.assert_allclose(encode.read_ntu_skeleton(p, bodies='slot')[0], np.array(one), atol=1e-4)
    quiet, active, medium = body(rng, 4, 0.01), body(rng, 4, 1.0), body(rng, 4, 0.3)
    p.write_text(ntu_text([[a, b, c] for a, b, c in zip(quiet, active, medium)]))
    x = encode.read_ntu_skeleton(p, bodies='slot')             # ST-GCN's slots
    assert x.shape == (2, 4, 25, 3)                            # the two most active, slot order kept
    np.testing.assert_allclose(x[0], np.array(active), atol=1e-4)
    np.testing.assert_allclose(x[1], np.array(medium), atol=1e-4)


def test_parse_decimals_exact_or_flagged():
    tokens = [b'0.2184366', b'-3.25', b'12', b'-0.000123', b'7.', b'0', b'.5', b'+4.25', b'-12345678.9',
              b'12345678901234', b'3.785517', b'-0.1997358',                          # plain: parsed
              b'-1.4E-45', b'1.2.3', b'-', b'-.', b'1x', b'1234567890123456', b'\xb0.5']     # not plain: flagged
    text = b' '.join(tokens) + b' ' * 16
    starts = np.cumsum([0] + [len(t) + 1 for t in tokens[:-1]])
    values, lengths, ok = encode.parse_decimals(text, starts)
    assert ok.tolist() == [True] * 12 + [False] * 7
    assert lengths.tolist() == [len(t) for t in tokens]                     # up to the next space
    assert values[:12].tolist() == [0.2184366, -3.25, 12.0, -0.000123, 7.0, 0.0, 0.5, 4.25, -12345678.9,
                                    12345678901234.0, 3.785517, -0.1997358]        # == float(token), bit for bit
    _, lengths, ok = encode.parse_decimals(b'12345678901234567 ' + b' ' * 16, np.array([0]))
    assert lengths.tolist() == [16] and not ok[0]                            # 16: no space within 16 bytes


def test_ntu_reader_unusual_layout_falls_back(tmp_path):
    """CRLF line ends, tabs, double spaces and exponents read the same as the plain layout."""
    rng = np.random.default_rng(11)
    plain = ntu_text([[b] for b in body(rng, 3)])
    lines = plain.split('\n')
    lines[4] = lines[4].replace(' ', '\t', 1)                   # joint 0 of frame 0: a tab
    lines[5] = '  ' + lines[5].replace(' ', '  ')               # joint 1: leading and double spaces
    x, y, z = lines[6].split()[:3]
    lines[6] = ' '.join([f'{float(x) * 10:.5f}E-1', y, z] + lines[6].split()[3:])  # joint 2: an exponent
    odd = tmp_path / 'S001C001P001R001A002.skeleton'
    odd.write_bytes('\r\n'.join(lines).encode())
    (tmp_path / 'S001C001P001R001A001.skeleton').write_text(plain)
    np.testing.assert_allclose(encode.read_ntu_skeleton(odd),
                               encode.read_ntu_skeleton(tmp_path / 'S001C001P001R001A001.skeleton'), rtol=1e-6)
    for bad, shown in [('0.1 abc 0.3 0 0 0 0 0 0 0 0 2', '0.1 abc 0.3'), ('0.1 0.2', '0.1 0.2')]:  # z not taken
        lines[7] = bad                                                                  # from the next line
        odd.write_text('\n'.join(lines))
        with pytest.raises(encode.EncodeError, match=f"line 8 should start with x y z numbers, got '{shown}'"):
            encode.read_ntu_skeleton(odd)


def test_ntu_files_read_together_stay_apart(tmp_path):
    """read_ntu_skeletons parses a chunk of files at once: each gets its own array or its own error,
    with line numbers of its own file; a file without a final newline does not run into the next."""
    rng = np.random.default_rng(12)
    frames = {'one': [[b] for b in body(rng, 3)], 'two': [[a, b] for a, b in zip(body(rng, 2), body(rng, 2))]}
    paths = {k: tmp_path / f'{k}.skeleton' for k in ['one', 'bad', 'two', 'cut', 'gone', 'last']}
    paths['one'].write_text(ntu_text(frames['one']))
    lines = ntu_text(frames['one']).split('\n')
    lines[9] = '0.1 0.2 zz 0 0 0 0 0 0 0 0 2'                   # joint 5 of frame 0
    paths['bad'].write_text('\n'.join(lines))
    paths['two'].write_text(ntu_text(frames['two']).rstrip('\n'))  # no final newline
    paths['cut'].write_text('\n'.join(ntu_text(frames['one']).split('\n')[:40]))
    paths['last'].write_text(ntu_text([frames['two'][0][:1]]))     # one frame, its first body
    one, bad, two, cut, gone, last = encode.read_ntu_skeletons(list(paths.values()), bodies='slot')
    np.testing.assert_allclose(one[0], np.array(frames['one']).squeeze(1), atol=1e-5)
    assert two.shape == (2, 2, 25, 3) and last.shape == (1, 1, 25, 3)
    np.testing.assert_allclose(two.transpose(1, 0, 2, 3), np.array(frames['two']), atol=1e-5)
    np.testing.assert_array_equal(last[0, 0], two[0, 0])
    assert isinstance(bad, encode.EncodeError) and str(paths['bad']) in str(bad)
    assert "line 10 should start with x y z numbers, got '0.1 0.2 zz'" in str(bad)
    assert isinstance(cut, encode.EncodeError) and 'truncated' in str(cut) and str(paths['cut']) in str(cut)
    assert isinstance(gone, FileNotFoundError)
    for k in ['one', 'two', 'last']:                            # the same as read one by one
        np.testing.assert_array_equal(encode.read_ntu_skeleton(paths[k], bodies='slot'), locals()[k])


def test_ntu_chunks_write_every_row_in_place(tmp_path):
    """NTU items go to the workers in chunks; a corrupt file inside a chunk is skipped and every
    stored row still belongs to its name."""
    rng = np.random.default_rng(13)
    root = tmp_path / 'ntu'
    root.mkdir()
    names = [f'S001C001P001R001A{a:03d}' for a in range(1, 12)]          # P001: all train in xsub
    for n in names:
        (root / f'{n}.skeleton').write_text(ntu_text([[b] for b in body(rng, 4)]))
    (root / f'{names[3]}.skeleton').write_text('4\n1\n')                     # truncated
    (root / 'S001C001P003R001A001.skeleton').write_text(ntu_text([[b] for b in body(rng, 4)]))  # test
    meta = run(['--data', 'ntu60', '--root', root, '--out', tmp_path / 'out', '--size', 16, '--workers', 2])
    d = tmp_path / 'out' / 'ntu60' / 'xsub'
    kept = names[:3] + names[4:]
    assert (d / 'train_names.txt').read_text().split() == kept and meta['counts']['train'] == 10
    assert meta['skipped'][0]['name'] == names[3] and 'truncated' in meta['skipped'][0]['reason']
    fmt = encode.get_format('ntu25')
    for name, image in zip(kept, np.load(d / 'train_joint.npy')):
        expected = encode.encode_sequence(encode.read_ntu_skeleton(root / f'{name}.skeleton'), fmt, ['joint'], 16)
        np.testing.assert_array_equal(image, expected['joint'].astype(np.float16))


def test_ntu_end_to_end_protocols_and_missing_list(tmp_path):
    names = make_ntu(tmp_path / 'ntu', np.random.default_rng(1))
    (tmp_path / 'ntu' / 'NTU_RGBD_samples_with_missing_skeletons.txt').write_text('S002C003P002R002A003\n')
    out = tmp_path / 'out'
    meta = run(['--data', 'ntu60', '--root', tmp_path / 'ntu', '--out', out, '--size', 16])
    d = out / 'ntu60' / 'xsub'
    assert (d / 'train_names.txt').read_text().split() == [names[0]]       # P001 train; A061 not NTU60
    assert (d / 'test_names.txt').read_text().split() == [names[1]]        # P003 test
    assert np.load(d / 'test_labels.npy').tolist() == [1]
    assert meta['skipped'] == [dict(name=names[2], split='train', reason='missing skeleton (official list)')]
    assert np.load(d / 'train_joint.npy').shape == (1, 3, 16, 16)
    # two-person sample: 12 frames -> 24 interleaved rows; the image row 0 is body 0 frame 0
    raw = encode.read_ntu_skeleton(tmp_path / 'ntu' / f'{names[1]}.skeleton')
    img = np.load(d / 'test_joint.npy')[0]
    np.testing.assert_allclose(img[:, 0, 0], raw[0, 0, 3] - raw[0, 0, 1], atol=2e-2)
    meta = run(['--data', 'ntu120', '--root', tmp_path / 'ntu', '--out', out, '--size', 16, '--protocol', 'xset'])
    d = out / 'ntu120' / 'xset'
    assert (d / 'train_names.txt').read_text().split() == [names[3]]       # S018 even setup
    assert sorted((d / 'test_names.txt').read_text().split()) == [names[0], names[1]]
    assert np.load(d / 'train_labels.npy').tolist() == [60] and meta['counts'] == dict(train=1, test=2)
    assert meta['num_classes'] == 120


def test_protocol_splits():
    assert encode.ntu_split('S001C001P001R001A001', 'ntu60', 'xsub') == 'train'
    assert encode.ntu_split('S001C001P003R001A001', 'ntu60', 'xsub') == 'test'
    assert encode.ntu_split('S005C001P038R001A001', 'ntu60', 'xsub') == 'train'
    assert encode.ntu_split('S001C001P040R001A001', 'ntu60', 'xsub') == 'test'
    assert encode.ntu_split('S001C001P001R001A001', 'ntu60', 'xview') == 'test'
    assert encode.ntu_split('S001C002P001R001A001', 'ntu60', 'xview') == 'train'
    assert encode.ntu_split('S001C003P001R001A001', 'ntu60', 'xview') == 'train'
    assert encode.ntu_split('S020C001P103R001A100', 'ntu120', 'xsub') == 'train'
    assert encode.ntu_split('S020C001P104R001A100', 'ntu120', 'xsub') == 'test'
    assert encode.ntu_split('S020C001P001R001A100', 'ntu120', 'xset') == 'train'
    assert encode.ntu_split('S021C001P001R001A100', 'ntu120', 'xset') == 'test'
    assert encode.UCLA_XVIEW == {1: 'train', 2: 'train', 3: 'test'}
    assert encode.parse_toyota_name('Cook.Cleandishes_p03_r00_v02_c01_pose3d') == \
        dict(action='Cook.Cleandishes', subject=3, camera=1)


def write_pku(root, rng):
    (root / 'skeleton').mkdir(parents=True)
    (root / 'label').mkdir()
    vids = {'0002-L': 'train', '0002-M': 'train', '0291-L': 'test'}
    for k, v in enumerate(vids):
        x = rng.normal(size=(30, 150))
        x[:, 75:] = 0 if k != 1 else x[:, 75:]                 # second body only in 0002-M
        np.savetxt(root / 'skeleton' / f'{v}.txt', x, fmt='%.5f')
        (root / 'label' / f'{v}.txt').write_text(f'{3 + k},0,9,1\n{5 + k},10,19,2\n')
    (root / 'cross-subject.txt').write_text('Training videos: \n0002-L, 0002-M\nValidataion videos: \n0291-L\n')
    return vids


def test_pku_reader_and_split(tmp_path):
    write_pku(tmp_path / 'pku', np.random.default_rng(2))
    meta = run(['--data', 'pku1', '--root', tmp_path / 'pku', '--out', tmp_path / 'out', '--size', 16,
                '--modality', 'joint'])
    d = tmp_path / 'out' / 'pku1' / 'xsub'
    assert (d / 'train_names.txt').read_text().split() == ['0002-L_000_A003', '0002-L_001_A005',
                                                          '0002-M_000_A004', '0002-M_001_A006']
    assert np.load(d / 'train_labels.npy').tolist() == [2, 4, 3, 5]
    assert np.load(d / 'test_labels.npy').tolist() == [4, 6]
    assert meta['counts'] == dict(train=4, test=2) and not (d / 'train_bone.npy').exists()
    seg = encode.load_item(('pku', str(tmp_path / 'pku' / 'skeleton' / '0002-M.txt'), 10, 19), 25)[0]
    assert seg.shape == (2, 10, 25, 3)
    assert encode.preprocess(seg, 'ntu25').shape == (20, 25, 3)   # two people -> 20 frames


def ucla_json(path, t, label, rng, joints=20):
    path.write_text(json.dumps(dict(file_name=path.stem, label=label,
                                    skeletons=rng.normal(size=(t, joints, 3)).round(5).tolist())))


def make_ucla(root, rng):
    root.mkdir()
    for a, lab in (('a01', 1), ('a12', 10)):
        for v in ('v01', 'v02', 'v03'):
            ucla_json(root / f'{a}_s01_e00_{v}.json', 7, lab, rng)


def test_ucla_reader(tmp_path):
    make_ucla(tmp_path / 'ucla', np.random.default_rng(3))
    meta = run(['--data', 'ucla', '--root', tmp_path / 'ucla', '--out', tmp_path / 'out', '--size', 16, '--preview', 2])
    d = tmp_path / 'out' / 'ucla' / 'xview'
    assert meta['counts'] == dict(train=4, test=2) and meta['num_classes'] == 10
    assert (d / 'test_names.txt').read_text().split() == ['a01_s01_e00_v03', 'a12_s01_e00_v03']
    assert np.load(d / 'train_labels.npy').tolist() == [0, 0, 9, 9]
    sk = np.array(json.loads((tmp_path / 'ucla' / 'a01_s01_e00_v03.json').read_text())['skeletons'], np.float32)
    low, high = sk.min(axis=(0, 1)), sk.max(axis=(0, 1))         # Cheng et al.: each axis to [-1, 1]
    scaled = (sk - low) / (high - low) * 2 - 1
    img = np.load(d / 'test_joint.npy')[0].astype(np.float32)
    np.testing.assert_allclose(img[:, 0, 0], scaled[0, 3], atol=1e-2)               # head, frame 0
    np.testing.assert_allclose(img[:, 15, 15], scaled[6, 19], atol=1e-2)            # right foot, last frame
    assert img.min() >= -1 and img.max() <= 1
    bone = np.load(d / 'test_bone.npy')[0].astype(np.float32)
    np.testing.assert_allclose(bone[:, 0, 0], scaled[0, 3] - scaled[0, 2], atol=1e-2)   # head - shoulder centre
    run(['--data', 'ucla', '--root', tmp_path / 'ucla', '--out', tmp_path / 'plain', '--size', 16, '--rescale', 'none'])
    img = np.load(tmp_path / 'plain' / 'ucla' / 'xview' / 'test_joint.npy')[0].astype(np.float32)
    np.testing.assert_allclose(img[:, 0, 0], sk[0, 3] - sk[0, 1], atol=1e-2)        # head - centre, frame 0
    np.testing.assert_allclose(img[:, 15, 15], sk[6, 19] - sk[0, 1], atol=1e-2)     # right foot, last frame
    assert set(meta['mean']) == {'joint', 'bone', 'motion'} and len(meta['std']['joint']) == 3
    tr = np.load(d / 'train_joint.npy').astype(np.float64)
    # the sums are taken on the float32 images, before the float16 store: equal up to float16 rounding
    np.testing.assert_allclose(meta['mean']['joint'], tr.mean(axis=(0, 2, 3)), atol=2e-5)
    np.testing.assert_allclose(meta['std']['joint'], tr.std(axis=(0, 2, 3)), rtol=1e-4)
    png = (d / 'preview' / 'grid.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n'
    w, h = struct.unpack('>II', png[16:24])
    assert w > 3 * 16 and h > 2 * 16                       # 3 streams x 2 samples, enlarged, captioned (test_pictures)
    assert len(list((d / 'preview').glob('*_joint.png'))) == 2
    assert json.loads((d / 'meta.json').read_text())['format'] == 'ucla20'
    assert json.loads((d / 'meta.json').read_text())['metric'] == 'top1'
    names = json.loads((d / 'meta.json').read_text())['class_names']   # label 1..10 -> a01-a06, a08, a09, a11, a12
    assert len(names) == 10 and names[0] == 'pick up with one hand' and names[6] == 'donning' and names[9] == 'carry'


def test_toyota_reader(tmp_path):
    rng = np.random.default_rng(4)
    root = tmp_path / 'toyota'
    root.mkdir()
    files = ['Cook.Cleandishes_p03_r00_v02_c01', 'Drink.Frombottle_p03_r00_v01_c02',
             'Cook.Cleandishes_p02_r00_v02_c02', 'Drink.Frombottle_p02_r00_v01_c01', 'Walk_p02_r00_v01_c03']
    for n in files:
        frames = [[{'pose3d': rng.normal(size=39).round(4).tolist(), 'cumscore': 2.0},
                   {'pose3d': [0.0] * 39, 'cumscore': 1.0}] for _ in range(5)] + [[]]
        (root / f'{n}_pose3d.json').write_text(json.dumps({'njts': 13, 'frames': frames}))
    meta = run(['--data', 'toyota', '--root', root, '--out', tmp_path / 'out', '--size', 16, '--modality', 'joint'])
    d = tmp_path / 'out' / 'toyota' / 'xsub'
    assert meta['class_names'] == ['Cook.Cleandishes', 'Drink.Frombottle'] and meta['num_classes'] == 2
    assert meta['metric'] == 'mean_class_accuracy'                     # Das et al. 2019; other datasets: top1
    assert (d / 'train_names.txt').read_text().split() == ['Cook.Cleandishes_p03_r00_v02_c01',
                                                          'Drink.Frombottle_p03_r00_v01_c02']
    assert (d / 'test_names.txt').read_text().split() == ['Cook.Cleandishes_p02_r00_v02_c02',
                                                         'Drink.Frombottle_p02_r00_v01_c01']
    assert np.load(d / 'test_labels.npy').tolist() == [0, 1]
    assert [s['name'] for s in meta['skipped']] == ['Walk_p02_r00_v01_c03']
    x = encode.read_toyota_json(root / 'Walk_p02_r00_v01_c03_pose3d.json')
    p = np.array(json.loads((root / 'Walk_p02_r00_v01_c03_pose3d.json').read_text())['frames'][0][0]['pose3d'])
    np.testing.assert_allclose(x[0, 0, 12], [p[12], p[25], p[38]], atol=1e-5)   # head: x12, y12, z12
    assert x.shape == (1, 6, 13, 3) and not x[0, 5].any()
    meta = run(['--data', 'toyota', '--root', root, '--out', tmp_path / 'out', '--size', 16, '--modality', 'joint',
                '--protocol', 'xview1'])
    d = tmp_path / 'out' / 'toyota' / 'xview1'          # camera 1 train, camera 2 test, camera 3 unused
    assert (d / 'train_names.txt').read_text().split() == ['Cook.Cleandishes_p03_r00_v02_c01',
                                                          'Drink.Frombottle_p02_r00_v01_c01']
    assert (d / 'test_names.txt').read_text().split() == ['Cook.Cleandishes_p02_r00_v02_c02',
                                                         'Drink.Frombottle_p03_r00_v01_c02']


def test_npz_pkl_npy_generic(tmp_path, tri3):
    rng = np.random.default_rng(5)
    x_tr = np.zeros((3, 10, 150), np.float32)
    x_tr[:, :6] = rng.normal(size=(3, 6, 150))
    x_tr[:, :, 75:] = 0
    np.savez(tmp_path / 'ntu.npz', x_train=x_tr, y_train=np.eye(4)[[0, 3, 1]], x_test=x_tr[:2], y_test=np.eye(4)[[2, 2]])
    meta = run(['--data', 'npz', '--input', tmp_path / 'ntu.npz', '--format', 'ntu25', '--name', 'ntu60',
                '--protocol', 'xsub', '--out', tmp_path / 'out', '--size', 16])
    d = tmp_path / 'out' / 'ntu60' / 'xsub'
    assert meta['counts'] == dict(train=3, test=2) and np.load(d / 'train_labels.npy').tolist() == [0, 3, 1]
    img = np.load(d / 'train_joint.npy')[1].astype(np.float32)
    seq = x_tr[1, :6, :75].reshape(6, 25, 3)
    np.testing.assert_allclose(img[:, 15, 0], seq[5, 3] - seq[0, 1], atol=2e-2)  # padding frames 6..9 dropped
    # pyskl pkl, 2D coco17 with scores
    ann = [dict(frame_dir=f'v{i}', label=i % 2, keypoint=rng.normal(size=(1, 5, 17, 2)),
                keypoint_score=rng.uniform(size=(1, 5, 17))) for i in range(4)]
    with open(tmp_path / 'coco.pkl', 'wb') as f:
        pickle.dump(dict(split=dict(xsub_train=['v0', 'v1', 'v2'], xsub_val=['v3']), annotations=ann), f)
    msg = fail(['--data', 'pkl', '--input', tmp_path / 'coco.pkl', '--format', 'coco17', '--out', tmp_path / 'out'])
    assert 'coco.pkl' in msg and 'arbitrary code' in msg and '--trust-pickle' in msg
    meta = run(['--data', 'pkl', '--input', tmp_path / 'coco.pkl', '--format', 'coco17', '--trust-pickle',
                '--out', tmp_path / 'out', '--size', 16])
    assert meta['protocol'] == 'xsub' and meta['counts'] == dict(train=3, test=1) and meta['channels'][2] == 'score'
    assert (tmp_path / 'out' / 'pkl' / 'xsub' / 'test_names.txt').read_text().split() == ['v3']
    # npy with a format that exists only in a temp yaml (--joints)
    fmt, yml = tri3
    x = rng.normal(size=(10, 4, 3, 3)).astype(np.float32)
    np.save(tmp_path / 'x.npy', x)
    np.save(tmp_path / 'y.npy', np.arange(10) % 3)
    meta = run(['--data', 'npy', '--input', tmp_path / 'x.npy', '--labels', tmp_path / 'y.npy', '--format', 'tri3',
                '--joints', yml, '--out', tmp_path / 'out', '--size', 16, '--modality', 'bone'])
    d = tmp_path / 'out' / 'npy' / 'default'
    assert meta['counts'] == dict(train=8, test=2) and meta['format'] == 'tri3'
    assert (d / 'test_names.txt').read_text().split() == ['000004', '000009']   # every 5th sample
    img = np.load(d / 'test_bone.npy')[0].astype(np.float32)
    np.testing.assert_allclose(img[:, 0, 0], x[4, 0, 2] - x[4, 0, 1], atol=1e-2)   # column 0 = joint c, bone c-b


def test_synthetic_default(tmp_path):
    meta = run(['--out', tmp_path, '--size', 16, '--synthetic-train', 3, '--synthetic-test', 1, '--workers', 2])
    d = tmp_path / 'synthetic' / 'default'
    assert meta['num_classes'] == 6 and meta['counts'] == dict(train=18, test=6)
    assert np.load(d / 'train_labels.npy').tolist() == list(range(6)) * 3
    a = np.load(d / 'train_joint.npy')
    assert a.shape == (18, 3, 16, 16) and a.dtype == np.float16 and np.isfinite(a).all()
    assert np.array_equal(encode.synthetic_sequence(2, 7), encode.synthetic_sequence(2, 7))
    assert 40 <= encode.synthetic_sequence(2, 7).shape[1] <= 120


# ------------------------------------------------------------------ atomic output, bounded memory

def test_atomic_output(tmp_path, monkeypatch):
    make_ucla(tmp_path / 'ucla', np.random.default_rng(6))
    calls = []
    real = encode.encode_sequence

    def boom(*a, **k):
        calls.append(1)
        if len(calls) == 5:                                     # midway through the test split
            raise RuntimeError('killed')
        return real(*a, **k)
    monkeypatch.setattr(encode, 'encode_sequence', boom)
    with pytest.raises(RuntimeError):
        run(['--data', 'ucla', '--root', tmp_path / 'ucla', '--out', tmp_path / 'out', '--size', 16])
    d = tmp_path / 'out' / 'ucla' / 'xview'
    assert not (tmp_path / 'out').exists()                      # no final .npy, no partial, no meta.json, no folder


def test_skipped_samples_leave_no_gap(tmp_path):
    make_ucla(tmp_path / 'ucla', np.random.default_rng(7))
    run(['--data', 'ucla', '--root', tmp_path / 'ucla', '--out', tmp_path / 'clean', '--size', 16])
    clean = tmp_path / 'clean' / 'ucla' / 'xview'
    clean = dict(zip((clean / 'train_names.txt').read_text().split(), np.load(clean / 'train_motion.npy')))
    (tmp_path / 'ucla' / 'a01_s01_e00_v02.json').write_text('{"skeletons": [[[0.1, 0.2')   # the 2nd train item
    meta = run(['--data', 'ucla', '--root', tmp_path / 'ucla', '--out', tmp_path / 'out', '--size', 16, '--workers', 2])
    d = tmp_path / 'out' / 'ucla' / 'xview'
    assert meta['counts']['train'] == 3 and np.load(d / 'train_motion.npy').shape == (3, 3, 16, 16)
    assert meta['skipped'][0]['name'] == 'a01_s01_e00_v02' and 'a01_s01_e00_v02.json' in meta['skipped'][0]['reason']
    names = (d / 'train_names.txt').read_text().split()
    assert names == ['a01_s01_e00_v01', 'a12_s01_e00_v01', 'a12_s01_e00_v02']
    for name, image in zip(names, np.load(d / 'train_motion.npy')):   # rows moved up over the gap
        np.testing.assert_array_equal(image, clean[name])


def test_worker_writes_its_row(tmp_path):
    """Images go from the worker into their row of the output file; only the sums come back."""
    fmt = encode.get_format('ntu25')
    outputs = encode.create_outputs({m: tmp_path / f'train_{m}.npy' for m in ['joint', 'bone']}, 3, 16)
    encode._init_worker(dict(fmt=fmt, modalities=['joint', 'bone'], size=16, two_person='interleave'))
    item = ('s1', 2, 'train', ('synthetic', 2, 5))
    bodies = encode.synthetic_sequence(2, 5)
    name, label, sums, err = encode._encode_item((1, item, outputs))
    for fd in encode._CTX['files'].values():
        encode.os.close(fd)
    assert (name, label, err) == ('s1', 2, None)
    stored = np.load(outputs['bone'][0])                        # a valid .npy of 3 rows
    expected = encode.encode_sequence(bodies, fmt, ['bone'], 16)['bone']
    assert stored.shape == (3, 3, 16, 16) and not stored[0].any() and not stored[2].any()
    np.testing.assert_array_equal(stored[1], expected.astype(np.float16))
    np.testing.assert_allclose(sums['bone'][0], expected.sum(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(sums['bone'][1], np.square(expected).sum(axis=(1, 2)), rtol=1e-5)


# ------------------------------------------------------------------ bad input

def test_bad_inputs(tmp_path):
    out = ['--out', tmp_path / 'out']
    msg = fail(['--data', 'ucla', '--root', tmp_path / 'nope'] + out)
    assert 'nope' in msg and 'does not exist' in msg
    (tmp_path / 'empty').mkdir()
    msg = fail(['--data', 'ntu60', '--root', tmp_path / 'empty'] + out)
    assert 'empty' in msg and 'no *.skeleton files' in msg
    assert 'unknown dataset' in fail(['--data', 'kinetics'] + out)
    msg = fail(['--data', 'npy', '--input', tmp_path / 'x.npy', '--format', 'smpl24'] + out)
    assert 'unknown skeleton format' in msg and 'smpl24' in msg
    rng = np.random.default_rng(8)
    # truncated NTU file
    root = tmp_path / 'ntu'
    root.mkdir()
    text = ntu_text([[b] for b in body(rng, 3)])
    (root / 'S001C001P001R001A001.skeleton').write_text(text[:len(text) // 2].rsplit('\n', 1)[0])
    msg = fail(['--data', 'ntu60', '--root', root, '--strict'] + out)
    assert 'S001C001P001R001A001.skeleton' in msg and 'truncated' in msg
    # wrong joint count in NTU
    (root / 'S001C001P001R001A001.skeleton').write_text(ntu_text([[rng.normal(size=(24, 3))]]))
    msg = fail(['--data', 'ntu60', '--root', root, '--strict'] + out)
    assert 'S001C001P001R001A001.skeleton' in msg and 'expected 25' in msg
    # UCLA: corrupt JSON, NaN, 19 joints
    make_ucla(tmp_path / 'ucla', rng)
    bad = tmp_path / 'ucla' / 'a01_s01_e00_v01.json'
    bad.write_text('{"skeletons": [[[0.1')
    msg = fail(['--data', 'ucla', '--root', tmp_path / 'ucla', '--strict'] + out)
    assert 'a01_s01_e00_v01.json' in msg and 'JSON' in msg
    bad.write_text(json.dumps(dict(label=1, skeletons=[[[float('nan'), 0, 0]] * 20] * 3)))
    msg = fail(['--data', 'ucla', '--root', tmp_path / 'ucla', '--strict'] + out)
    assert 'a01_s01_e00_v01.json' in msg and 'NaN' in msg
    ucla_json(bad, 4, 1, rng, joints=19)
    msg = fail(['--data', 'ucla', '--root', tmp_path / 'ucla', '--strict'] + out)
    assert 'a01_s01_e00_v01.json' in msg and 'T x 20 x 3' in msg
    # zero valid samples in a split fails even without --strict
    for f in (tmp_path / 'ucla').glob('*_v03.json'):
        f.write_text('[]')
    msg = fail(['--data', 'ucla', '--root', tmp_path / 'ucla'] + out)
    assert 'no valid test samples' in msg and '_v03.json' in msg
    assert not (tmp_path / 'out' / 'ucla' / 'xview' / 'meta.json').exists()
    # npz joint count not matching the format
    np.savez(tmp_path / 'bad.npz', x_train=np.ones((2, 4, 20 * 3)), y_train=np.eye(2), x_test=np.ones((1, 4, 60)),
             y_test=np.eye(2)[:1])
    msg = fail(['--data', 'npz', '--input', tmp_path / 'bad.npz', '--format', 'ntu25', '--strict'] + out)
    assert 'bad.npz' in msg and 'multiple of 75' in msg


# ------------------------------------------------------------------ real data (opt-in)

@pytest.mark.skipif(UCLA_REAL is None, reason='NW-UCLA not found: set S2I_DATA to the folder holding nw_ucla/')
def test_real_nw_ucla(tmp_path):
    meta = run(['--data', 'ucla', '--root', UCLA_REAL, '--out', tmp_path, '--size', 64, '--workers', 2,
                '--modality', 'joint'])
    assert meta['counts'] == dict(train=1020, test=464) and meta['num_classes'] == 10
    d = tmp_path / 'ucla' / 'xview'
    labels = np.load(d / 'train_labels.npy')
    assert sorted(set(labels.tolist())) == list(range(10))
    assert np.load(d / 'test_joint.npy', mmap_mode='r').shape == (464, 3, 64, 64)
    assert all(n.endswith('_v03') for n in (d / 'test_names.txt').read_text().split())
