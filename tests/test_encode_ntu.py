"""SGN's NTU chain in encode.py, one hand-made .skeleton fixture per rule: which bodies are kept, in
which order, and the origin; then the same images from the .skeleton files and from the .npz the
chain writes (both its NTU-60 and its NTU-120 padding), and per-actor motion."""
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
import encode

STAND = np.array([encode._STAND[j] for j in range(25)], np.float32)   # x spread 0.44 m, y spread 1.62 m


def person(t, step=(0.0, 0.0, 0.0), at=(0.0, 0.0, 3.0), wide=1.0, seed=0):
    """(t, 25, 3) standing skeleton moving by `step` per frame; wide > 1 stretches x (a ghost whose x
    spread exceeds 0.8 x its y spread)."""
    rng = np.random.default_rng(seed)
    x = STAND * np.array([wide, 1, 1], np.float32) + np.array(at, np.float32)
    x = x[None] + np.arange(t)[:, None, None] * np.array(step, np.float32)
    return (x + rng.normal(0, 0.002, x.shape)).round(5).astype(np.float32)


def skeleton_text(frames):
    """frames: per frame a list of (bodyID, (25, 3) joints) -> the official .skeleton text."""
    out = [str(len(frames))]
    for bodies in frames:
        out.append(str(len(bodies)))
        for body_id, joints in bodies:
            out += [f'{body_id} 0 1 1 1 1 0 0.1 0.2 2', '25']
            out += [f'{x:.5f} {y:.5f} {z:.5f} 0 0 250.1 200.2 0 0 0 0 2' for x, y, z in joints]
    return '\n'.join(out) + '\n'


def track(body_id, joints, first):
    """{frame: (bodyID, joints of that frame)} for a body seen from frame `first` on."""
    return {first + k: (body_id, j) for k, j in enumerate(joints)}


def write(path, n_frames, *tracks, order=None):
    """A file of n_frames whose frame t holds the bodies of the tracks present at t, in track order
    (or order(t) -> track indices)."""
    frames = []
    for t in range(n_frames):
        ks = order(t) if order else range(len(tracks))
        frames.append([tracks[k][t] for k in ks if t in tracks[k]])
    path.write_text(skeleton_text(frames))
    return path


def read(path, **kw):
    notes = {}
    x = encode.read_ntu_skeletons([path], notes=notes, **kw)[0]
    if isinstance(x, Exception):
        raise x
    return x, notes.get(0, {})


def test_slot_swap_is_followed_by_body_id(tmp_path):
    """Kinect swaps the two slots at frame 10: SGN follows each bodyID; ST-GCN's slots mix them."""
    a, b = person(20, step=(0.02, 0, 0)), person(20, at=(1.0, 0, 3.0), seed=1)   # a walks: more motion
    p = write(tmp_path / 'S001C001P001R001A050.skeleton', 20, track(1, a, 0), track(2, b, 0),
              order=lambda t: [0, 1] if t < 10 else [1, 0])
    x, removed = read(p)
    origin = a[0, 1]                                           # actor 1's joint 2 in its first frame
    assert x.shape == (2, 20, 25, 3)
    np.testing.assert_array_equal(x[0], a - origin)
    np.testing.assert_array_equal(x[1], b - origin)
    assert removed == dict(frames_without_body=0, short_bodies=0, spread_bodies=0, unassigned_bodies=0,
                           frames_without_actor=0)
    slots = encode.read_ntu_skeleton(p, bodies='slot')
    np.testing.assert_array_equal(slots[0, 10:], b[10:])     # slot 0 holds the other person after the swap


def test_five_frame_ghost_is_dropped(tmp_path):
    a = person(20, step=(0, 0, 0.01))
    ghost = person(5, step=(0.5, 0, 0), at=(2.0, 0, 3.0), seed=2)   # far more motion, but 5 frames
    p = write(tmp_path / 'S001C001P001R001A001.skeleton', 20, track(7, a, 0), track(9, ghost, 3))
    x, removed = read(p)
    assert x.shape == (1, 20, 25, 3) and removed['short_bodies'] == 1
    np.testing.assert_array_equal(x[0], a - a[0, 1])


def test_wide_spread_ghost_is_dropped(tmp_path):
    """A body whose x spread exceeds 0.8 x its y spread in most frames is noise, however it moves."""
    a = person(20)
    ghost = person(20, step=(0, 0.05, 0), at=(-1.0, 0, 3.0), wide=4.0, seed=3)   # x spread 1.76 > 0.8 x 1.62
    p = write(tmp_path / 'S001C001P001R001A001.skeleton', 20, track(5, ghost, 0), track(6, a, 0))
    x, removed = read(p)
    assert x.shape == (1, 20, 25, 3) and removed['spread_bodies'] == 1
    np.testing.assert_array_equal(x[0], a - a[0, 1])


def test_still_body_is_actor_2_and_origin_is_actor_1(tmp_path):
    """A still body present from frame 0 in slot 0, the moving person from frame 5: the mover is actor
    1 (more motion), the origin is its joint 2 in frame 5, and actor 1 stays zero in frames 0-4."""
    still, mover = person(20, at=(1.0, 0, 3.5), seed=4), person(15, step=(0.03, 0, 0), seed=5)
    p = write(tmp_path / 'S001C001P001R001A055.skeleton', 20, track(3, still, 0), track(4, mover, 5))
    x, removed = read(p)
    origin = mover[0, 1]
    assert x.shape == (2, 20, 25, 3) and removed['unassigned_bodies'] == 0
    assert not x[0, :5].any()
    np.testing.assert_array_equal(x[0, 5:], mover - origin)
    np.testing.assert_array_equal(x[1], still - origin)
    rows = encode.preprocess(x, 'ntu25')                        # no second centring: already at the origin
    np.testing.assert_array_equal(rows[:5], still[:5] - origin)   # frames 0-4: actor 2 alone
    np.testing.assert_array_equal(rows[5:7], np.stack([mover[0], still[5]]) - origin)   # then actor 1, actor 2


def test_third_body_and_actor_2_interval_from_frame_0(tmp_path):
    """Actor 2's interval starts as [0, 0] and grows by min/max: once B (frames 25-39) is actor 2, C
    (frames 0-14) overlaps it although C and B never share a frame, so C is discarded."""
    a = person(40, step=(0.03, 0, 0))
    b = person(15, step=(0.01, 0, 0), at=(1.0, 0, 3.0), seed=6)
    c = person(15, step=(0.005, 0, 0), at=(-1.0, 0, 3.0), seed=7)
    p = write(tmp_path / 'S001C001P001R001A052.skeleton', 40, track(1, a, 0), track(2, b, 25), track(3, c, 0))
    x, removed = read(p)
    assert x.shape == (2, 40, 25, 3) and removed['unassigned_bodies'] == 1
    np.testing.assert_array_equal(x[0], a - a[0, 1])
    assert not x[1, :25].any()                                 # C is not in actor 2's free frames 0-14
    np.testing.assert_array_equal(x[1, 25:], b - a[0, 1])


def test_bodies_in_turn_share_actor_1_and_empty_frames_go(tmp_path):
    """A (frames 0-14) and B (frames 20-34) never overlap: B continues actor 1. Frames 15-19 hold only
    a 5-frame ghost: once it is dropped, they hold no actor and are removed. A frame without any body
    is dropped when the file is read."""
    a, b = person(15, step=(0.03, 0, 0)), person(15, step=(0.01, 0, 0), seed=8)
    ghost = person(5, seed=9)
    frames = {**track(1, a, 0), **track(2, b, 20)}
    p = write(tmp_path / 'S001C001P001R001A001.skeleton', 36, frames, track(3, ghost, 15))  # frame 35: empty
    x, removed = read(p)
    assert x.shape == (2, 30, 25, 3)
    assert removed == dict(frames_without_body=1, short_bodies=1, spread_bodies=0, unassigned_bodies=0,
                           frames_without_actor=5)
    np.testing.assert_array_equal(x[0], np.concatenate([a, b]) - a[0, 1])
    assert not x[1].any()


def test_single_body_id_is_not_denoised(tmp_path):
    """One bodyID in the file: kept whatever its spread and length."""
    ghostly = person(4, wide=4.0)
    x, removed = read(write(tmp_path / 'S001C001P001R001A001.skeleton', 4, track(1, ghostly, 0)))
    np.testing.assert_array_equal(x[0], ghostly - ghostly[0, 1])
    assert removed == dict(frames_without_body=0)


def chain_npz(path, samples, labels, copy_person):
    """The .npz layout seq_transformation.py writes: (N, 300, 150), frames padded with zeros, a
    one-actor sample's second 75 values zero (data/ntu) or a copy of the first (data/ntu120)."""
    x = np.zeros((len(samples), 300, 150), np.float32)
    for n, s in enumerate(samples):
        flat = s.transpose(1, 0, 2, 3).reshape(s.shape[1], -1)
        x[n, :len(flat), :flat.shape[1]] = flat
        if len(s) == 1 and copy_person:
            x[n, :len(flat), 75:] = flat
    y = np.eye(60)[labels]
    np.savez(path, x_train=x[:2], y_train=y[:2], x_test=x[2:], y_test=y[2:])


@pytest.mark.parametrize('copy_person', [False, True])
def test_skeleton_files_and_chain_npz_give_the_same_images(tmp_path, copy_person):
    """Acceptance: --data ntu60 on .skeleton files == --data npz on the chain's .npz of the same
    samples, written here from the hand-computed chain output (kept bodies, order, origin)."""
    root = tmp_path / 'raw'
    root.mkdir()
    a, b = person(20, step=(0.02, 0, 0)), person(20, at=(1.0, 0, 3.0), seed=1)
    still, mover = person(20, at=(1.0, 0, 3.5), seed=4), person(15, step=(0.03, 0, 0), seed=5)
    single, ghost = person(18, step=(0, 0, 0.01), seed=6), person(5, step=(0.5, 0, 0), seed=7)
    write(root / 'S001C002P001R001A050.skeleton', 20, track(1, a, 0), track(2, b, 0),
          order=lambda t: [0, 1] if t < 10 else [1, 0])                              # train, two actors
    write(root / 'S001C002P002R001A001.skeleton', 18, track(7, single, 0), track(9, ghost, 3))   # train, one
    write(root / 'S001C001P001R001A055.skeleton', 20, track(3, still, 0), track(4, mover, 5))    # test
    expected = [np.stack([a, b]) - a[0, 1], (single - single[0, 1])[None],
                np.stack([np.concatenate([np.zeros((5, 25, 3), np.float32), mover]), still]) - mover[0, 1]]
    expected[2][0, :5] = 0
    chain_npz(tmp_path / 'NTU60_CV.npz', expected, [49, 0, 54], copy_person)
    raw = encode.main(encode.get_args(['--data', 'ntu60', '--root', str(root), '--protocol', 'xview', '--out',
                                       str(tmp_path / 'out'), '--size', '32', '--quiet']))
    npz = encode.main(encode.get_args(['--data', 'npz', '--input', str(tmp_path / 'NTU60_CV.npz'), '--format',
                                       'ntu25', '--name', 'chain', '--out', str(tmp_path / 'out'), '--size', '32',
                                       '--quiet']))
    assert raw['counts'] == npz['counts'] == dict(train=2, test=1) and npz['num_classes'] == 60
    for split in encode.SPLITS:
        assert np.load(tmp_path / 'out' / 'ntu60' / 'xview' / f'{split}_labels.npy').tolist() == \
            np.load(tmp_path / 'out' / 'chain' / 'default' / f'{split}_labels.npy').tolist()
        for m in encode.MODALITIES:
            np.testing.assert_array_equal(np.load(tmp_path / 'out' / 'ntu60' / 'xview' / f'{split}_{m}.npy'),
                                          np.load(tmp_path / 'out' / 'chain' / 'default' / f'{split}_{m}.npy'))
    assert raw['denoising_removed'] == dict(frames_without_body=0, short_bodies=1, spread_bodies=0,
                                            unassigned_bodies=0, frames_without_actor=0)


def test_npz_origin_is_actor_1_when_it_enters_late(tmp_path):
    """An .npz sample whose actor 1 enters at frame 5 (not yet translated): the origin is actor 1's
    joint 2 in frame 5, not the first row (actor 2's)."""
    still, mover = person(20, at=(1.0, 0, 3.5), seed=4), person(15, step=(0.03, 0, 0), seed=5)
    x = np.zeros((2, 20, 25, 3), np.float32)
    x[0, 5:], x[1] = mover, still
    rows = encode.preprocess(x, 'ntu25')
    np.testing.assert_array_equal(rows[0], still[0] - mover[0, 1])


def test_motion_is_per_actor(tmp_path):
    """Two people a metre apart moving the same way: no value of the motion stream holds the metre
    (it did when the motion was taken across the interleaved rows: --motion interleaved)."""
    a = person(12, step=(0.01, 0, 0))
    b = person(12, step=(0.01, 0, 0), at=(1.0, 0, 3.0))
    x = np.stack([a, b])
    seq, actor = encode.preprocess(x, 'ntu25', with_actors=True)
    assert actor.tolist() == [0, 1] * 12
    motion = encode.streams(seq, 'ntu25', ['motion'], actor)['motion']
    np.testing.assert_allclose(motion[:-2, :, 0], 0.01, atol=0.01)         # each person's own step
    assert not motion[-2:].any()                                           # each actor's last frame
    image = encode.encode_sequence(x, 'ntu25', ['motion'], 32)['motion']
    assert np.abs(image).max() < 0.05
    across = encode.encode_sequence(x, 'ntu25', ['motion'], 32, motion='interleaved')['motion']
    assert np.abs(across).max() > 0.9                                       # the metre between them


def test_motion_variance_is_numpys_bit_for_bit():
    """The motion orders the bodies; its faster form must round exactly as the chain's np.var."""
    rng = np.random.default_rng(0)
    for n in (1, 2, 12, 90, 300):
        joints = (rng.normal(size=(n, 25, 3)) * rng.uniform(0.01, 3) + rng.normal(size=3) * 3).astype(np.float32)
        assert encode._variance_sum(joints) == np.var(joints.reshape(-1, 3), axis=0).sum()


def test_fast_ntu_reader_is_the_plain_one(tmp_path):
    """The speed section's ntu_records (a chunk of files at once, SWAR decimals) gives what
    ntu_records_plain (one file, int() and float()) gives, bit for bit, on files in the official
    layout as tools/bench.py writes them: one to three bodies, and the number forms NTU files hold
    (negative, decimals of every length, '-0', integers like '0'), plus exponents and overlong
    decimals, which take the float() fallback."""
    import bench
    odd = ['-0', '0', '-0.0', '0.000', '12', '-3', '7.', '-.25', '+0.5', '0.1234567890123', '-123456.7890123',
           '-0.000000001', '3.785517', '-0.1997358', '1e-3', '-2.5E+1', '0.12345678901234567']
    rng = np.random.default_rng(0)
    paths = []
    for k, bodies in enumerate([1, 2, 3, 2, 1]):
        lines = bench.ntu_file_text(rng, frames=20, bodies=bodies).split('\n')
        for n, line in enumerate(lines):
            values = line.split()
            if len(values) == 12 and rng.random() < 0.3:       # a joint line: odd forms for some of x, y, z
                values[:3] = [str(rng.choice(odd)) if rng.random() < 0.5 else v for v in values[:3]]
                lines[n] = ' '.join(values)
        paths.append(tmp_path / f'S001C001P001R001A{k + 1:03d}.skeleton')
        paths[-1].write_text('\n'.join(lines).rstrip('\n') if k == 3 else '\n'.join(lines))   # one without final newline
    for path, fast in zip(paths, encode.ntu_records(paths)):
        plain = encode.ntu_records_plain(path)
        assert fast[0] == plain[0]                                          # frames
        for a, b in zip(fast[1:], plain[1:]):                               # frame, slot, bodyID keys, x y z
            assert a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert max(len(r[1]) for r in encode.ntu_records(paths)) == 60          # 3 bodies x 20 frames
