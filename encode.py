"""
Skeleton-to-Image Encoding (S2I): raw skeleton datasets -> (3, S, S) images on disk.

    python encode.py --data synthetic --out data                       # the demo, no download
    python encode.py --data ucla --root all_sqe --out data --workers 4 --preview 4
    python encode.py --data ntu60 --root nturgb+d_skeletons --protocol xview --out data
    python encode.py --data npz --input NTU60_CS.npz --format ntu25 --name ntu60 --protocol xsub

S2I (paper Sec. 3.1): joints are reordered by body part (spine, left arm, right arm, left leg, right
leg; joints.yaml), the T x J x C sequence becomes a C x T x J map (x, y, z -> R, G, B) and is resized
to S x S by linear interpolation along T and along J separately (align_corners=True).
Preprocessing (Sec. 4.2, SGN): NTU people by bodyID, denoised and ordered as SGN's chain; padding
frames dropped, the whole sequence translated by actor 1's centre joint in its first frame, a frame
with two people split into two consecutive single-person frames; NW-UCLA rescaled as Cheng et al.
Streams: joint, bone (joint - parent), motion (each person's frame t+1 - frame t, last frame zero).

Output ({out}/{name}/{protocol}/, see docs/DATA.md): {split}_{modality}.npy float16 (N, 3, S, S),
{split}_labels.npy int64, {split}_names.txt, meta.json (written last: its presence = complete).

The file reads in the order of the docs: S2I and the streams, skeleton formats, the reference chains
(SGN, Cheng et al.), one reader per dataset, the code that exists only for speed, the driver.
Imports nothing but numpy, pyyaml, Pillow (previews only) and the standard library.
"""
import argparse
import contextlib
import ctypes
import functools
import json
import multiprocessing as mp
import os
import pickle
import re
import struct
import sys
import time
import zipfile
from pathlib import Path

# The interpolation products are tiny: a threaded BLAS only spins (0.3 ms -> 100 ms per image on a
# busy 2-core machine). Parallelism comes from --workers processes instead.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')
import numpy as np  # noqa: E402  (after the thread limit, which numpy reads on import)
import yaml

HERE = Path(__file__).resolve().parent
JOINTS_FILE = HERE / 'joints.yaml'
PARTS = ('spine', 'left_arm', 'right_arm', 'left_leg', 'right_leg')  # S2I order (Sec. 3.1)
MODALITIES = ('joint', 'bone', 'motion')
SPLITS = ('train', 'test')
PATCH = 16                   # ViT patch side (common.PATCH_SIZE): the smallest image that makes one token
MILLIMETRES_MEDIAN = 20.0    # median |coordinate| above this looks like millimetres (see encode)

# dataset -> (joints.yaml format, protocols; the first is the default)
DATASETS = {
    'ntu60': ('ntu25', ('xsub', 'xview')),
    'ntu120': ('ntu25', ('xsub', 'xset')),
    'pku1': ('ntu25', ('xsub',)),
    'pku2': ('ntu25', ('xsub',)),
    'ucla': ('ucla20', ('xview',)),
    'toyota': ('toyota13', ('xsub', 'xview1')),
    'synthetic': ('ntu25', ('default',)),
    'npz': (None, None),  # generic inputs: --input FILE --format KEY
    'pkl': (None, None),
    'npy': (None, None),
}

# official protocol lists
NTU60_XSUB_TRAIN = {1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38}
NTU120_XSUB_TRAIN = NTU60_XSUB_TRAIN | {
    45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86, 89,
    91, 92, 93, 94, 95, 97, 98, 100, 103}
NTU60_XVIEW_TRAIN_CAMERAS = {2, 3}
TOYOTA_XSUB_TRAIN = {3, 4, 6, 7, 9, 12, 13, 15, 17, 19, 25}  # Das et al. 2019
TOYOTA_XVIEW1 = {1: 'train', 2: 'test'}  # camera 5 is validation in the official CV1: not used
UCLA_XVIEW = {1: 'train', 2: 'train', 3: 'test'}
UCLA_CLASSES = ('pick up with one hand', 'pick up with two hands', 'drop trash', 'walk around', 'sit down',
                'stand up', 'donning', 'doffing', 'throw', 'carry')   # actions a01-a06, a08, a09, a11, a12 (Wang et al. 2014)
NUM_CLASSES = dict(ntu60=60, ntu120=120, pku1=51, ucla=10)  # others: from the labels (or class names)
NTU_MISSING_LISTS = ('NTU_RGBD_samples_with_missing_skeletons.txt',
                     'NTU_RGBD120_samples_with_missing_skeletons.txt')
NTU_ID_BYTES = 24            # a bodyID is compared on its first 24 bytes (NTU's have 17 digits)


class EncodeError(Exception):
    """Bad input: the message names the file and what was expected; main() turns it into one line."""

    def __init__(self, where, what):
        super().__init__(f'{where}: {what}')
        self.where, self.what = str(where), what


# ----------------------------------------------------------------------------------------------
# S2I (paper Sec. 3.1) and the joint, bone and motion streams

def s2i(sequence, fmt, size=224, joints_file=None):
    """Skeleton-to-Image: sequence (T, J, C) in source joint order -> (C, size, size) float32.
    Joints reordered by body part, (x, y, z) -> channels, rows = frames, columns = joints, both axes
    resized independently by linear interpolation with align_corners=True."""
    fmt = get_format(fmt, joints_file)
    x = np.asarray(sequence, np.float32)
    if x.ndim != 3 or x.shape[1] != fmt['num_joints'] or x.shape[0] < 1:
        raise EncodeError('s2i', f"expected a (T, {fmt['num_joints']}, C) sequence for {fmt['name']}, got {x.shape}")
    t, j, c = x.shape
    x = np.ascontiguousarray(x[:, fmt['order'], :].transpose(2, 0, 1))   # (C, T, J), body-part order
    rows = interp_matrix(t, size) @ x                          # (C, S, J): time axis
    return (rows.reshape(c * size, j) @ interp_matrix(j, size).T).reshape(c, size, size)  # joint axis


@functools.lru_cache(maxsize=4096)
def interp_matrix(n_in, n_out):
    """(n_out, n_in) linear-interpolation matrix, align_corners=True: output i samples input position
    i * (n_in - 1) / (n_out - 1), so the first/last rows hit the first/last input exactly; a single
    input is repeated."""
    m = np.zeros((n_out, n_in), np.float32)
    if n_in == 1:
        m[:, 0] = 1.0
        return m
    pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
    lo = np.minimum(np.floor(pos).astype(np.int64), n_in - 2)
    w = (pos - lo).astype(np.float32)
    rows = np.arange(n_out)
    m[rows, lo] = 1.0 - w
    m[rows, lo + 1] += w
    m.setflags(write=False)
    return m


def preprocess(bodies, fmt, two_person='interleave', where='sample', rescale='none', scale=1.0, with_actors=False):
    """Raw (M, T, J, C) or (T, J, C) skeletons -> one (T', J, C) float32 sequence (paper Sec. 4.2, SGN).

    - coordinates are multiplied by `scale` (--scale-coords);
    - a body absent from every frame is dropped, and so is a body identical to body 0 in every frame
      (CTR-GCN's data/ntu120 chain stores a one-person sample with the person copied into slot 2);
    - padding frames (all bodies all zero) are dropped; an all-zero body in a frame is absent;
    - two (or more) people: 'interleave' (default, SGN / the paper: a frame holding two people becomes
      two consecutive single-person frames: body0 t, body1 t, body0 t+1, ...; single-person frames
      stay as they are), 'concat' (all frames of body0, then all frames of body1), 'first' (body0
      only; frames where only body1 is present are dropped);
    - the whole sequence is translated by the mean of the centre joints (joints.yaml) in actor 1's
      (body 0's) first present frame, as SGN's seq_transformation.py;
    - rescale 'minmax' (NW-UCLA as Cheng et al. 2020, rescale_minmax): then each axis is mapped to
      [-1, 1] by its min and max over all frames and joints.
    The score channel of 2D formats (x, y, score) is never scaled, centred or rescaled.
    with_actors: also return each output frame's body index (T',), for per-actor motion.
    """
    fmt = get_format(fmt)
    x = np.asarray(bodies, np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[2] != fmt['num_joints'] or x.shape[3] != 3:
        raise EncodeError(where, f"expected skeletons of {fmt['num_joints']} joints x 3 values ({fmt['name']}), "
                                 f"got array of shape {x.shape}")
    if not np.isfinite(x).all():
        raise EncodeError(where, 'NaN or inf coordinates (expected finite numbers)')
    geo = fmt['geometry']                                      # 3 for (x, y, z), 2 for (x, y, score)
    if scale != 1.0:
        x = x * np.array([scale] * geo + [1.0] * (3 - geo), np.float32)
    present = np.abs(x).sum(axis=(2, 3)) > 0                   # (M, T)
    keep = present.any(axis=1)
    for m in range(1, len(x)):
        keep[m] &= not np.array_equal(x[m], x[0])
    if not keep.any():
        raise EncodeError(where, 'no non-zero frames (expected at least one frame with a skeleton)')
    x, present = x[keep], present[keep]
    if two_person == 'first':
        frames, actor = x[0][present[0]], np.zeros(int(present[0].sum()), np.int64)
    elif two_person == 'concat':
        frames = np.concatenate([x[m][present[m]] for m in range(x.shape[0])])
        actor = np.repeat(np.arange(len(x)), present.sum(axis=1))
    elif two_person == 'interleave':
        tm = present.T                                         # (T, M): frame-major order
        frames, actor = x.transpose(1, 0, 2, 3)[tm], np.nonzero(tm)[1]
    else:
        raise EncodeError('--two-person', f"unknown mode '{two_person}' (expected interleave, concat or first)")
    centre = np.zeros(3, np.float32)
    joints = x[0, np.argmax(present[0]), fmt['centre_idx']]            # actor 1's first present frame
    centre[:geo] = (joints[0] if len(joints) == 1 else joints.mean(axis=0))[:geo]
    frames = frames - centre
    if rescale == 'minmax':
        frames = rescale_minmax(frames, geo, where)
    elif rescale != 'none':
        raise EncodeError('--rescale', f"unknown mode '{rescale}' (expected minmax or none)")
    return (frames, actor) if with_actors else frames


def streams(seq, fmt, modalities=MODALITIES, actor=None, motion='per-actor'):
    """joint / bone / motion streams of a preprocessed (T, J, C) sequence in source joint order.
    motion 'per-actor' (default): the next row of the same actor minus this row (actor: (T,) body
    index per row, from preprocess), i.e. each person's own frame-to-frame difference, so the distance
    between two people never enters it; each actor's last row is zero. 'interleaved': the next row, whoever
    it belongs to. The score channel of 2D formats is kept as is in every stream."""
    fmt = get_format(fmt)
    out = {}
    for m in modalities:
        if m == 'joint':
            out[m] = seq
        elif m == 'bone':
            out[m] = seq - seq[:, fmt['parent']]
        elif m == 'motion':
            mo = np.zeros_like(seq)
            if motion == 'interleaved' or actor is None or (actor == actor[0]).all():
                mo[:-1] = seq[1:] - seq[:-1]
            elif motion == 'per-actor':
                order = np.argsort(actor, kind='stable')       # each actor's rows, in time order
                same = actor[order[1:]] == actor[order[:-1]]
                now, after = order[:-1][same], order[1:][same]
                mo[now] = seq[after] - seq[now]
            else:
                raise EncodeError('--motion', f"unknown mode '{motion}' (expected per-actor or interleaved)")
            out[m] = mo
        else:
            raise EncodeError('--modality', f"unknown modality '{m}' (expected joint, bone, motion or all)")
        if fmt['geometry'] == 2 and m != 'joint':
            out[m][..., 2] = seq[..., 2]                       # a score is not geometry: no difference
    return out


def encode_sequence(bodies, fmt, modalities=MODALITIES, size=224, two_person='interleave', where='sample',
                    rescale='none', scale=1.0, motion='per-actor'):
    """Raw skeletons -> {modality: (3, size, size) float32}."""
    seq, actor = preprocess(bodies, fmt, two_person, where, rescale, scale, with_actors=True)
    return {m: s2i(v, fmt, size) for m, v in streams(seq, fmt, modalities, actor, motion).items()}


# ----------------------------------------------------------------------------------------------
# skeleton formats (joints.yaml)

@functools.lru_cache(maxsize=8)
def load_formats(joints_file=None):
    """All formats of joints.yaml, validated, with index arrays added: order (joint indices in S2I
    order), parent (per joint), centre_idx, partner (per joint, from flip_pairs) and mirror (each image
    column's partner column, written to meta.json for the flip; None without flip_pairs). A
    joints_file (--joints) adds its formats to joints.yaml's and replaces those of the same name."""
    formats, paths = {}, [JOINTS_FILE]
    if joints_file and Path(joints_file).resolve() != JOINTS_FILE:
        paths.append(Path(joints_file))
    for path in paths:
        if not path.is_file():
            raise EncodeError(path, 'joints file not found (expected a YAML file of skeleton formats)')
        try:
            raw = yaml.load(path.read_text(), getattr(yaml, 'CSafeLoader', yaml.SafeLoader))   # libyaml: 10x faster
        except yaml.YAMLError as e:
            raise EncodeError(path, f'not valid YAML ({str(e).splitlines()[0]})')
        if not isinstance(raw, dict) or not raw:
            raise EncodeError(path, 'expected a mapping of format name -> {joints, parts, bones, ...}')
        for key, spec in raw.items():
            where = f'{path} [{key}]'
            if not isinstance(spec, dict):
                raise EncodeError(where, 'expected a mapping with joints, parts, bones, flip_pairs, centre, channels')
            for field in ('joints', 'parts', 'bones', 'centre', 'channels'):
                if field not in spec:
                    raise EncodeError(where, f"missing field '{field}'")
            joints = [str(j) for j in spec['joints']]
            index = {name: i for i, name in enumerate(joints)}
            if len(index) != len(joints):
                raise EncodeError(where, 'joint names must be unique')

            def idx(name, field):
                if name not in index:
                    raise EncodeError(where, f"{field}: unknown joint '{name}' (not in joints)")
                return index[name]

            parts = spec['parts']
            if not isinstance(parts, dict) or list(parts) != list(PARTS):
                raise EncodeError(where, f'parts must be exactly {list(PARTS)} in this order, got {list(parts or [])}')
            order = [idx(n, f'parts.{p}') for p in PARTS for n in parts[p]]
            seen = {}
            for p in PARTS:
                for n in parts[p]:
                    if n in seen:
                        raise EncodeError(where, f"joint '{n}' is in part {seen[n]} and in part {p} (each joint in "
                                                 'exactly one part)')
                    seen[n] = p
            missing = [n for n in joints if n not in seen]
            if missing:
                raise EncodeError(where, f'joints in no part: {missing} (every joint must be in exactly one part)')
            parent = [-1] * len(joints)
            for pair in spec['bones']:
                child, par = idx(pair[0], 'bones'), idx(pair[1], 'bones')
                if parent[child] != -1:
                    raise EncodeError(where, f"bones: joint '{pair[0]}' has two parents")
                parent[child] = par
            if -1 in parent:
                raise EncodeError(where, f'bones: no parent for {[joints[i] for i, p in enumerate(parent) if p == -1]} '
                                         '(every joint needs one; the root is its own parent)')
            partner = list(range(len(joints)))                 # each joint's left/right partner; the midline's: itself
            for pair in spec.get('flip_pairs') or []:
                a, b = idx(pair[0], 'flip_pairs'), idx(pair[1], 'flip_pairs')
                if a == b or partner[a] != a or partner[b] != b:
                    raise EncodeError(where, f"flip_pairs: [{pair[0]}, {pair[1]}]: expected two different joints, "
                                             'each in at most one pair')
                partner[a], partner[b] = b, a
            unmirrored = [joints[j] for j in range(len(joints)) if partner[parent[j]] != parent[partner[j]]]
            if unmirrored:
                raise EncodeError(where, f'flip_pairs: the mirror of the bones of {unmirrored} is no bone (expected the '
                                         "partner of a joint's parent to be the parent of its partner)")
            column = {joint: c for c, joint in enumerate(order)}
            mirror = [column[partner[j]] for j in order] if spec.get('flip_pairs') else None
            centre = [idx(n, 'centre') for n in spec['centre']]
            if not centre:
                raise EncodeError(where, 'centre: expected at least one joint')
            if len(spec['channels']) != 3:
                raise EncodeError(where, f"channels: expected 3 names (x, y, z or x, y, score), got {spec['channels']}")
            formats[key] = dict(name=key, joints=joints, parts={p: list(parts[p]) for p in PARTS},
                                channels=list(spec['channels']), geometry=2 if spec['channels'][2] == 'score' else 3,
                                order=np.array(order), parent=np.array(parent), centre_idx=np.array(centre),
                                partner=np.array(partner), mirror=mirror, num_joints=len(joints))
    return formats


def get_format(fmt, joints_file=None):
    """A format dict: `fmt` is already one (returned as is) or a joints.yaml key."""
    if isinstance(fmt, dict):
        return fmt
    formats = load_formats(str(joints_file) if joints_file else None)
    if fmt not in formats:
        raise EncodeError(f'--format {fmt}', f'unknown skeleton format (expected one of {sorted(formats)} '
                                             f'in {joints_file or JOINTS_FILE})')
    return formats[fmt]


# ----------------------------------------------------------------------------------------------
# reference chains, rule by rule. NTU RGB+D: SGN's, as Uason-Chen/CTR-GCN data/ntu/get_raw_skes_data.py,
# get_raw_denoised_data.py and seq_transformation.py run it (data/ntu120 applies the same rules; only
# its final padding differs, see preprocess). NW-UCLA: Cheng et al. 2020's, as Shift-GCN / CTR-GCN
# feeders/feeder_ucla.py. Their constants:
SGN_NOISE_LENGTH = 11        # a bodyID seen in this many frames or fewer is noise (noise_len_thres)
SGN_SPREAD_X_OVER_Y = 0.8    # a frame is noisy when its x spread exceeds 0.8 x its y spread (noise_spr_thres1)
SGN_NOISY_RATIO = 0.69754    # a body with this share of noisy frames or more is dropped (noise_spr_thres2)
SGN_ORIGIN_JOINT = 1         # joint 2 (0-based 1), middle of the spine: the origin of the translation


def sgn_bodies(values, frame, ids, where='sample', file_frames=None):
    """SGN's chain on one file's body records, values (N, J, 3) float32 at frame (N,) with bodyID
    ids (N,), in file order -> ((M, T, J, 3) float32 with M = 1 or 2 actors, translated, {rule:
    count removed}). Frames without a body are dropped; a single bodyID is not denoised."""
    frame = np.asarray(frame)
    frame = np.concatenate([[0], np.cumsum(frame[1:] != frame[:-1])])   # index among the frames holding a body
    n_frames = int(frame[-1]) + 1
    people = bodies_by_id(values, frame, ids)
    removed = dict(frames_without_body=(file_frames or n_frames) - n_frames)
    if len(people) == 1:
        actors = people[0]['joints'][None]                    # (1, T, J, 3)
    else:
        people, removed['short_bodies'] = drop_short_bodies(people)
        if not people:
            raise EncodeError(where, f'every bodyID is seen in {SGN_NOISE_LENGTH} frames or fewer (SGN drops '
                                     'them all: no person left)')
        people, removed['spread_bodies'] = drop_spread_bodies(people)
        people = sorted(people, key=body_motion, reverse=True)  # stable, as Python's sorted
        actors, removed['unassigned_bodies'] = assign_actors(people, n_frames)
        actors, removed['frames_without_actor'] = drop_frames_without_actor(actors)
        if actors.shape[1] == 0:
            raise EncodeError(where, 'every frame of the chosen actors is all zero (no skeleton left)')
    return translate_to_actor1(actors), removed


def bodies_by_id(values, frame, ids):
    """People by bodyID (Kinect reorders its body slots between frames, so a slot is not a person), in
    order of first appearance: dict(joints (n, J, 3), start). The chain numbers a body's frames
    start, start + 1, ... whatever frames it misses, so a body with a gap is pulled together from its
    first frame; kept, as it decides the overlaps below."""
    ids = np.asarray(ids).reshape(len(ids), -1)               # (N, K): one key row per body record
    if (ids == ids[0]).all():
        return [dict(joints=values, start=int(frame[0]))]
    people, left = [], np.ones(len(ids), bool)
    while left.any():                                          # a handful of bodyIDs per file
        same = (ids == ids[np.argmax(left)]).all(axis=1)
        rows = np.flatnonzero(same)
        people.append(dict(joints=values[rows], start=int(frame[rows[0]])))
        left &= ~same
    return people


def body_motion(person, frames=None):
    """A person's motion, the sum over x, y, z of the variance of all its joints over all its frames
    (or the given frames), float32 as the chain computes it; worked out when first needed, as most
    files are down to one body before it matters."""
    if frames is not None:
        return _variance_sum(person['joints'][frames])
    if 'motion' not in person:
        person['motion'] = _variance_sum(person['joints'])
    return person['motion']


def drop_short_bodies(people):
    """Step 1: bodyIDs seen in SGN_NOISE_LENGTH frames or fewer are noise."""
    kept = [p for p in people if len(p['joints']) > SGN_NOISE_LENGTH]
    return kept, len(people) - len(kept)


def drop_spread_bodies(people):
    """Step 2, in order of first appearance and only while more than one body is left: a frame is
    noisy when the x spread of its joints exceeds SGN_SPREAD_X_OVER_Y x their y spread; a body with
    a share of noisy frames >= SGN_NOISY_RATIO is dropped, otherwise its motion becomes the smaller
    of its motion and the same variance over its valid frames. (The motion-range filter of the
    chain's comments is commented out there: not applied.)"""
    kept = list(people)
    for p in people:
        if len(kept) == 1:
            break
        xy = np.ascontiguousarray(p['joints'][:, :, :2].transpose(0, 2, 1))   # (n, 2, J): a fast max/min
        spread = (xy.max(axis=2) - xy.min(axis=2)).astype(np.float64)         # float32 differences
        valid = spread[:, 0] <= SGN_SPREAD_X_OVER_Y * spread[:, 1]
        if valid.all():
            continue
        if (len(valid) - valid.sum()) / len(valid) >= SGN_NOISY_RATIO:
            kept = [q for q in kept if q is not p]
        else:
            p['motion'] = min(body_motion(p), body_motion(p, valid))
    return kept, len(people) - len(kept)


def assign_actors(people, n_frames):
    """Bodies sorted by motion -> (2, T, J, 3). Actor 1 is the first; each next body joins actor 1 if
    its interval does not overlap actor 1's, else actor 2 if it does not overlap actor 2's, else it is
    discarded. No overlap is min(ends) - max(starts) <= 0 (touching intervals share a frame, the later
    body overwrites it). Actor 2's interval starts as [0, 0] and grows by min/max, so once set it
    always begins at frame 0. A single body left -> (1, T, J, 3)."""
    actors = np.zeros((2 if len(people) > 1 else 1, n_frames) + people[0]['joints'].shape[1:], np.float32)
    spans, discarded = [None, [0, 0]], 0
    for k, p in enumerate(people):
        start, end = p['start'], p['start'] + len(p['joints']) - 1
        actor = 0 if k == 0 or min(spans[0][1], end) - max(spans[0][0], start) <= 0 else \
            1 if min(spans[1][1], end) - max(spans[1][0], start) <= 0 else None
        if actor is None:
            discarded += 1
            continue
        actors[actor, start:end + 1] = p['joints']
        spans[actor] = [start, end] if spans[actor] is None else [min(start, spans[actor][0]), max(end, spans[actor][1])]
    return actors, discarded


def drop_frames_without_actor(actors):
    """Frames where both actors are missing (their coordinates sum to 0) are removed."""
    keep = actors.transpose(1, 0, 2, 3).reshape(actors.shape[1], -1).sum(axis=1) != 0
    return actors[:, keep], int((~keep).sum())


def translate_to_actor1(actors):
    """Origin = actor 1's joint 2 in its first frame with a non-zero value, subtracted from both
    actors; with two actors, frames where one is missing stay zero (seq_transformation.py)."""
    flat = actors.reshape(actors.shape[0], actors.shape[1], -1)          # (M, T, J*3)
    first = int(np.argmax((flat[0] != 0).any(axis=1)))
    out = actors - actors[0, first, SGN_ORIGIN_JOINT]
    if len(actors) == 2:
        out[flat.sum(axis=2) == 0] = 0
    return out


def rescale_minmax(frames, geo, where='sample'):
    """Cheng et al.: each coordinate axis of a (T, J, C) sequence to [-1, 1] by its min and max over
    all frames and joints (feeder_ucla.py: (v - min) / (max - min) * 2 - 1, per axis, after centring)."""
    low, high = frames[..., :geo].min(axis=(0, 1)), frames[..., :geo].max(axis=(0, 1))
    if (high <= low).any():
        axis = 'xyz'[int(np.argmax(high <= low))]
        raise EncodeError(where, f'axis {axis} is constant over the whole sample: cannot rescale it to [-1, 1] '
                                 '(use --rescale none)')
    out = frames.copy()
    out[..., :geo] = (frames[..., :geo] - low) / (high - low) * 2 - 1
    return out


# ----------------------------------------------------------------------------------------------
# readers, one per dataset. Every dataset is first listed as items (name, label, split, ref), so N
# is known before any array is allocated; load_item(ref) then reads one sample (in a worker process
# when --workers > 1) as raw skeletons (M, T, J, 3) float32 in source joint order, except NTU files,
# which the workers read a chunk at a time (read_ntu_skeletons).

def _files(root, pattern, what):
    root = Path(root)
    if not root.exists():
        raise EncodeError(root, f'--root does not exist (expected a directory of {what})')
    files = sorted(root.rglob(pattern)) if root.is_dir() else []
    if not files:
        raise EncodeError(root, f'no {pattern} files found (expected a directory of {what})')
    return files


def _read_json(path):
    try:
        return json.loads(Path(path).read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise EncodeError(path, f'corrupt or truncated JSON ({e})')


def _as_array(path, value, what):
    try:
        return np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError):
        raise EncodeError(path, f'{what}: expected a regular numeric array')


# NTU RGB+D 60 / 120: SsssCcccPpppRrrrAaaa.skeleton text files

def list_ntu(args, skipped):
    files = _files(args.root, '*.skeleton', 'NTU RGB+D .skeleton files')
    ignore = set()
    lists = [Path(args.ignore_list)] if args.ignore_list else \
        [p for n in NTU_MISSING_LISTS for p in (Path(args.root) / n, Path(args.root).parent / n) if p.is_file()]
    for p in lists:
        if not p.is_file():
            raise EncodeError(p, 'missing-skeleton list not found (expected one sample name per line)')
        ignore |= {ln.strip() for ln in p.read_text().splitlines() if ln.strip()}
    items = []
    for f in files:
        name = f.name.split('.')[0]
        info = parse_ntu_name(name)
        if args.data == 'ntu60' and (info['action'] > 60 or info['setup'] > 17):
            continue                                           # NTU120-only sample in a shared folder
        split = ntu_split(name, args.data, args.protocol)
        if name in ignore:
            skipped.append(dict(name=name, split=split, reason='missing skeleton (official list)'))
            continue
        items.append((name, info['action'] - 1, split, ('ntu', str(f))))
    return items


def parse_ntu_name(name):
    """SsssCcccPpppRrrrAaaa -> dict(setup, camera, performer, replication, action)."""
    m = re.match(r'S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})', name)
    if not m:
        raise EncodeError(name, 'NTU sample name, expected SsssCcccPpppRrrrAaaa')
    return dict(zip(('setup', 'camera', 'performer', 'replication', 'action'), map(int, m.groups())))


def ntu_split(name, dataset, protocol):
    """Official NTU split of one sample name: 'train' or 'test'."""
    info = parse_ntu_name(name)
    if protocol == 'xsub':
        train = info['performer'] in (NTU60_XSUB_TRAIN if dataset == 'ntu60' else NTU120_XSUB_TRAIN)
    elif protocol == 'xview':
        train = info['camera'] in NTU60_XVIEW_TRAIN_CAMERAS
    elif protocol == 'xset':
        train = info['setup'] % 2 == 0
    else:
        raise EncodeError(f'--protocol {protocol}', f'unknown protocol for {dataset}')
    return 'train' if train else 'test'


def read_ntu_skeleton(path, num_joints=25, max_bodies=2, bodies='sgn', notes=None):
    """NTU RGB+D 60/120 .skeleton text file -> (M, T, J, 3); see read_ntu_skeletons."""
    skeletons = read_ntu_skeletons([path], num_joints, max_bodies, bodies, notes)[0]
    if isinstance(skeletons, Exception):
        raise skeletons
    return skeletons


def read_ntu_skeletons(paths, num_joints=25, max_bodies=2, bodies='sgn', notes=None):
    """NTU RGB+D 60/120 .skeleton text files -> one (M, T, J, 3) array, or the EncodeError or
    OSError that file raised, per path. One line per record: a frame count, then per frame a body
    count and per body an info line (bodyID first), a joint count and one line of 12 values per
    joint, of which x, y, z are the first three (ntu_records reads them, all files at once).
    bodies 'sgn' (default): people by bodyID, denoised, ordered and translated as SGN's chain
    (sgn_bodies; notes, if a dict, gets {file index: what denoising removed}); 'slot': per frame
    slot as ST-GCN's ntu_gendata, the max_bodies most active slots kept."""
    results = []
    for k, record in enumerate(ntu_records(paths, num_joints)):
        if isinstance(record, Exception):
            results.append(record)
            continue
        n_frames, frame, slot, ids, values = record            # values (N, J, 3) of N body records
        if bodies == 'slot':
            skeletons = np.zeros((slot.max() + 1, n_frames) + values.shape[1:], np.float32)   # zeros where absent
            skeletons[slot, frame] = values
            if len(skeletons) > max_bodies:                    # activity: the x, y, z std over present frames
                energy = []
                for s in skeletons:
                    s = s[np.abs(s).sum(axis=(1, 2)) > 0]
                    energy.append(sum(s[:, :, c].std() for c in range(3)) if len(s) else 0.0)
                skeletons = skeletons[sorted(np.argsort(energy)[::-1][:max_bodies])]
            results.append(skeletons)
            continue
        try:
            skeletons, removed = sgn_bodies(values.astype(np.float32), frame, ids, paths[k], n_frames)
        except EncodeError as e:
            skeletons, removed = e, {}
        if notes is not None:
            notes[k] = removed
        results.append(skeletons)
    return results


# NW-UCLA: all_sqe/aAA_sSS_eEE_vVV.json

def list_ucla(args, skipped):
    items = []
    for f in _files(args.root, '*.json', 'NW-UCLA all_sqe .json files (aAA_sSS_eEE_vVV.json)'):
        m = re.match(r'a(\d+)_s(\d+)_e(\d+)_v(\d+)', f.stem)
        if not m:
            raise EncodeError(f, 'NW-UCLA file name, expected aAA_sSS_eEE_vVV.json')
        split = UCLA_XVIEW.get(int(m.group(4)))
        if split:
            items.append((f.stem, None, split, ('ucla', str(f))))  # label is read from the file
    args.class_names = list(UCLA_CLASSES)
    return items


def read_ucla_json(path):
    """NW-UCLA all_sqe JSON -> ((1, T, 20, 3), label 0-based)."""
    d = _read_json(path)
    if not isinstance(d, dict) or 'skeletons' not in d or 'label' not in d:
        raise EncodeError(path, 'expected a JSON object with "skeletons" (T x 20 x 3) and "label" (1..10)')
    x = _as_array(path, d['skeletons'], 'skeletons (T x 20 x 3)')
    if x.ndim != 3 or x.shape[1:] != (20, 3):
        raise EncodeError(path, f'skeletons of shape {x.shape}, expected T x 20 x 3 (ucla20)')
    label = d['label']
    if isinstance(label, bool) or not isinstance(label, (int, float)) or not float(label).is_integer() \
            or not 1 <= label <= 10:
        raise EncodeError(path, f'label {label!r}, expected an integer 1..10 (the NW-UCLA action index)')
    return x[None], int(label) - 1


# PKU-MMD: ROOT/skeleton/*.txt per video, ROOT/label/*.txt, the cross-subject split file

def list_pku(args, skipped):
    """Each labelled action of a video is an item. The official split file: a 'Training videos:'
    line, then names; 'Validation videos:' (or the file's own spelling 'Validataion'), then names;
    names separated by commas/spaces/newlines. A label file: lines 'action,start,end,confidence'."""
    root = Path(args.root)
    if not root.is_dir():
        raise EncodeError(root, '--root does not exist (expected PKU-MMD with skeleton/, label/ and the split file)')
    dirs = {d.name.lower(): d for d in root.iterdir() if d.is_dir()}
    skel = next((d for n, d in dirs.items() if 'skeleton' in n), None)
    label = next((d for n, d in dirs.items() if 'label' in n), None)
    split_file = Path(args.split_file) if args.split_file else \
        next(iter(sorted(p for p in root.glob('*.txt') if 'cross' in p.name.lower() and 'sub' in p.name.lower())), None)
    if skel is None or label is None:
        raise EncodeError(root, 'expected sub-directories skeleton/ (per-video .txt) and label/ (per-video .txt)')
    if split_file is None or not split_file.is_file():
        raise EncodeError(root, 'no cross-subject split file (expected cross-subject.txt in --root or --split-file)')
    split, videos = None, {'train': set(), 'test': set()}
    for line in split_file.read_text().splitlines():
        low = line.strip().lower()
        if low.startswith('train'):
            split, line = 'train', line.split(':', 1)[1] if ':' in line else ''
        elif low.startswith(('valid', 'test')):
            split, line = 'test', line.split(':', 1)[1] if ':' in line else ''
        names = [s for s in re.split(r'[,\s]+', line.strip()) if s]
        if names and split is None:
            raise EncodeError(split_file, "expected a 'Training videos:' line before the video names")
        if split:
            videos[split].update(names)
    if not videos['train'] or not videos['test']:
        raise EncodeError(split_file, "expected 'Training videos:' and 'Validation videos:' lists of video names")
    items = []
    for f in _files(skel, '*.txt', 'PKU-MMD skeleton .txt files'):
        vid = f.stem
        split = 'train' if vid in videos['train'] else 'test' if vid in videos['test'] else None
        if split is None:
            continue
        lab = label / f.name
        if not lab.is_file():
            skipped.append(dict(name=vid, split=split, reason=f'no label file {lab}'))
            continue
        actions = []
        for n, line in enumerate(lab.read_text().splitlines()):
            if not line.strip():
                continue
            fields = [s for s in re.split(r'[,\s]+', line.strip()) if s]
            try:
                actions.append((int(fields[0]), int(fields[1]), int(fields[2])))
            except (ValueError, IndexError):
                raise EncodeError(lab, f"line {n + 1}: expected 'action,start,end,confidence', got {line.strip()!r}")
        for k, (action, start, end) in enumerate(actions):
            items.append((f'{vid}_{k:03d}_A{action:03d}', action - 1, split, ('pku', str(f), start, end)))
    return items


@functools.lru_cache(maxsize=1)          # the items of one video come in a row: only the last one is kept
def read_pku_video(path):
    """PKU-MMD skeleton txt (one line per frame: 150 values = 2 bodies x 25 joints x 3) -> (2, T, 25, 3)."""
    try:
        v = np.array(Path(path).read_bytes().split(), dtype=np.float32)
    except ValueError as e:
        raise EncodeError(path, f'corrupt skeleton file, expected 150 numbers per line ({e})')
    if v.size == 0 or v.size % 150:
        raise EncodeError(path, f'{v.size} values, expected 150 per frame (2 bodies x 25 joints x 3)')
    return v.reshape(-1, 2, 25, 3).transpose(1, 0, 2, 3)


# Toyota Smarthome: ROOT/Activity_pNN_rNN_vNN_cNN_pose3d.json

def list_toyota(args, skipped):
    items = []
    for f in _files(args.root, '*.json', 'Toyota Smarthome skeleton .json files (Activity_pNN_rNN_vNN_cNN_pose3d.json)'):
        info = parse_toyota_name(f.stem)
        if args.protocol == 'xsub':
            split = 'train' if info['subject'] in TOYOTA_XSUB_TRAIN else 'test'
        else:
            split = TOYOTA_XVIEW1.get(info['camera'])
        if split:
            items.append((f.stem.replace('_pose3d', ''), info['action'], split, ('toyota', str(f))))
    # classes: the activities present in both splits of the protocol (31 for xsub, 19 for xview1)
    classes = sorted({i[1] for i in items if i[2] == 'train'} & {i[1] for i in items if i[2] == 'test'})
    index = {c: k for k, c in enumerate(classes)}
    out = []
    for name, action, split, ref in items:
        if action in index:
            out.append((name, index[action], split, ref))
        else:
            skipped.append(dict(name=name, split=split, reason=f"activity '{action}' not in both splits of {args.protocol}"))
    args.class_names = classes
    return out


def parse_toyota_name(name):
    m = re.match(r'(.+?)_p(\d+)_r(\d+)_v(\d+)_c(\d+)', name)
    if not m:
        raise EncodeError(name, 'Toyota sample name, expected Activity_pNN_rNN_vNN_cNN[_pose3d].json')
    return dict(action=m.group(1), subject=int(m.group(2)), camera=int(m.group(5)))


def read_toyota_json(path, num_joints=13):
    """Toyota Smarthome LCR-Net++ skeleton JSON -> (1, T, 13, 3).
    Layout: {"njts": 13, "frames": [[{"pose3d": [3*13], "pose2d": [2*13], "cumscore": s}, ...], ...]}:
    one list of detections per frame; pose3d is x0..x12, y0..y12, z0..z12 (LCR-Net output); a
    nested 13 x 3 list is accepted too. Per frame the detection with the highest cumscore is kept;
    frames without detection become padding (dropped)."""
    d = _read_json(path)
    if not isinstance(d, dict) or not isinstance(d.get('frames'), list):
        raise EncodeError(path, 'expected a JSON object with "frames": per frame a list of {"pose3d": [39 values]}')
    out = np.zeros((len(d['frames']), num_joints, 3), np.float32)
    for t, dets in enumerate(d['frames']):
        if isinstance(dets, dict):
            dets = [dets]
        if not dets:
            continue
        best = max(dets, key=lambda p: p.get('cumscore', 0.0) if isinstance(p, dict) else 0.0)
        p = _as_array(path, best['pose3d'] if isinstance(best, dict) and 'pose3d' in best else None, 'pose3d')
        if p.size != num_joints * 3:
            raise EncodeError(path, f'frame {t}: pose3d with {p.size} values, expected {num_joints * 3} (toyota13)')
        out[t] = p.reshape(3, num_joints).T if p.ndim == 1 else p.reshape(num_joints, 3)
    return out[None]


# synthetic ntu25 motions (the demo and the tests)

SYNTH_CLASSES = ('wave right arm', 'wave left arm', 'raise both arms', 'kick right leg', 'squat',
                 'lean side to side')
_STAND = {  # standing ntu25 skeleton in metres (x right, y up, z depth), 0-based joint index
    0: (0, 0.95, 0), 1: (0, 1.2, 0), 20: (0, 1.42, 0), 2: (0, 1.5, 0), 3: (0, 1.65, 0),
    4: (-0.18, 1.42, 0), 5: (-0.2, 1.15, 0), 6: (-0.22, 0.9, 0), 7: (-0.22, 0.82, 0), 21: (-0.22, 0.74, 0),
    22: (-0.19, 0.82, 0.03), 8: (0.18, 1.42, 0), 9: (0.2, 1.15, 0), 10: (0.22, 0.9, 0), 11: (0.22, 0.82, 0),
    23: (0.22, 0.74, 0), 24: (0.19, 0.82, 0.03), 12: (-0.1, 0.92, 0), 13: (-0.1, 0.5, 0),
    14: (-0.1, 0.08, 0), 15: (-0.1, 0.03, 0.1), 16: (0.1, 0.92, 0), 17: (0.1, 0.5, 0),
    18: (0.1, 0.08, 0), 19: (0.1, 0.03, 0.1)}
_LEFT_ARM, _RIGHT_ARM = [5, 6, 7, 21, 22], [9, 10, 11, 23, 24]
_RIGHT_LEG = [17, 18, 19]


def _rotate_about(p, pivot, angle, axis):
    """Rotate points p (..., 3) about pivot by angle (per frame, broadcast) around axis 'x' or 'z'."""
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    d = p - pivot
    out = d.copy()
    if axis == 'z':
        out[..., 0], out[..., 1] = c * d[..., 0] - s * d[..., 1], s * d[..., 0] + c * d[..., 1]
    else:
        out[..., 1], out[..., 2] = c * d[..., 1] - s * d[..., 2], s * d[..., 1] + c * d[..., 2]
    return out + pivot


def synthetic_sequence(label, seed):
    """One procedurally generated ntu25 sample (1, T, 25, 3): a standing skeleton; the class decides
    which limb moves and how (rhythm, amplitude); per-sample random speed, phase, body size, rotation
    about the vertical axis, noise and length (40-120 frames)."""
    rng = np.random.default_rng(seed)
    t_len = int(rng.integers(40, 121))
    base = np.array([_STAND[j] for j in range(25)], np.float32) * rng.uniform(0.85, 1.15)
    x = np.repeat(base[None], t_len, 0)
    t = np.arange(t_len) / 30.0
    cycles = rng.uniform(0.8, 1.2) * (1.0, 1.0, 0.6, 0.7, 0.5, 0.4)[label]
    phase = 2 * np.pi * cycles * t + rng.uniform(0, 2 * np.pi)
    amp = rng.uniform(0.8, 1.2)
    if label in (0, 1):                                       # wave: arm up, forearm swings fast
        arm, sh = (_RIGHT_ARM, 8) if label == 0 else (_LEFT_ARM, 4)
        sign = 1 if label == 0 else -1
        x[:, arm] = _rotate_about(x[:, arm], x[:, sh:sh + 1], np.full(t_len, sign * 2.4), 'z')
        x[:, arm[1:]] = _rotate_about(x[:, arm[1:]], x[:, arm[0]:arm[0] + 1], sign * 0.6 * amp * np.sin(phase), 'z')
    elif label == 2:                                          # both arms up and down, slow
        a = 1.3 * amp * (1 - np.cos(phase))
        x[:, _RIGHT_ARM] = _rotate_about(x[:, _RIGHT_ARM], x[:, 8:9], a, 'z')
        x[:, _LEFT_ARM] = _rotate_about(x[:, _LEFT_ARM], x[:, 4:5], -a, 'z')
    elif label == 3:                                          # kick forward with the right leg
        a = -0.8 * amp * np.maximum(0, np.sin(phase))
        x[:, _RIGHT_LEG] = _rotate_about(x[:, _RIGHT_LEG], x[:, 16:17], a, 'x')
    elif label == 4:                                          # squat: everything above the knees drops
        drop = 0.25 * amp * (1 - np.cos(phase)) / 2
        upper = [j for j in range(25) if j not in (13, 14, 15, 17, 18, 19)]
        x[:, upper, 1] -= drop[:, None]
        x[:, [13, 17], 1] -= drop[:, None] / 2
        x[:, [13, 17], 2] += drop[:, None]
    else:                                                     # lean side to side from the hips
        upper = [j for j in range(25) if j not in (0, 12, 13, 14, 15, 16, 17, 18, 19)]
        x[:, upper] = _rotate_about(x[:, upper], x[:, 0:1], 0.35 * amp * np.sin(phase), 'z')
    yaw = rng.uniform(-0.35, 0.35)
    c, s = np.cos(yaw), np.sin(yaw)
    x[..., 0], x[..., 2] = c * x[..., 0] + s * x[..., 2], -s * x[..., 0] + c * x[..., 2]
    x += rng.normal(0, 0.01, x.shape).astype(np.float32)
    x += np.array([rng.uniform(-0.5, 0.5), 0, rng.uniform(2.5, 3.5)], np.float32)
    return x[None].astype(np.float32)


def list_synthetic(args, skipped):
    items = []
    for split, per_class in (('train', args.synthetic_train), ('test', args.synthetic_test)):
        for i in range(per_class * len(SYNTH_CLASSES)):
            label = i % len(SYNTH_CLASSES)
            seed = args.seed * 1_000_003 + (0 if split == 'train' else 500_000) + i
            items.append((f'{split}_{i:05d}', label, split, ('synthetic', label, seed)))
    args.class_names = list(SYNTH_CLASSES)
    return items


# generic inputs (--input FILE --format KEY): CTR-GCN/SGN .npz, a dataset as named arrays in one .npz,
# pyskl .pkl, plain .npy

NPZ_ARRAYS = ('x', 'labels', 'split', 'names', 'class_names', 'format', 'lengths')   # one dataset in one .npz


def _generic_input(args):
    path = Path(args.input or '')
    if not args.input or not path.is_file():
        raise EncodeError(path, f'--input not found (expected a .{args.data} file)')
    return path, get_format(args.format, args.joints)


def list_npz(args, skipped):
    """CTR-GCN/SGN's x_train (N, T, M * V * 3), y_train (N,) or one-hot (N, K), x_test, y_test; or a
    whole dataset as named arrays (e.g. ../shared/data/msr_action3d): x (N, T, V, C) or another
    layout of npy_layout, labels (N,), split (N,) train/test or 0/1; optional names (N,),
    class_names (K,), format () (must match --format), lengths (N,) (frames past them are padding)."""
    path, fmt = _generic_input(args)
    src = _open_source(('npz', str(path), fmt['num_joints']))
    if 'x' in src and 'x_train' in src:
        raise EncodeError(path, "holds both 'x' (one dataset as named arrays) and 'x_train' (CTR-GCN/SGN's "
                                'split arrays): cannot tell which to read; keep one layout per file')
    if 'x' not in src:                                         # CTR-GCN/SGN's split arrays
        labels = {}
        for split in SPLITS:
            x, y = src[f'x_{split}'], np.asarray(src[f'y_{split}'])
            if len(x) != len(y):
                raise EncodeError(path, f'x_{split} has {len(x)} samples, y_{split} {len(y)} (expected equal)')
            labels[split] = y
            if y.ndim == 2:                                    # one-hot: its width is the class count
                if not ((y == 0) | (y == 1)).all() or not (y.sum(axis=1) == 1).all():
                    raise EncodeError(path, f'y_{split} of shape {y.shape} is not one-hot (expected one 1 per row)')
                args.num_classes = y.shape[1]
                labels[split] = np.argmax(y, 1)
        offset = args.label_offset if args.label_offset is not None else 0 if args.num_classes else None
        every = check_labels(np.concatenate([labels[s] for s in SPLITS]), path, offset, args.num_classes)
        labels = dict(train=every[:len(labels['train'])], test=every[len(labels['train']):])
        return [(f'{split}_{i:06d}', int(labels[split][i]), split, ('npz', str(path), fmt['num_joints'], split, i))
                for split in SPLITS for i in range(len(labels[split]))]
    x = src['x']
    for key in ('labels', 'split'):
        if key not in src:
            raise EncodeError(path, f"has 'x' but no '{key}' (expected arrays x, labels, split, and optionally "
                                    "names, class_names, format, lengths)")
    if 'format' in src and str(src['format']) != fmt['name']:
        raise EncodeError(path, f"holds format '{src['format']}' but --format is {fmt['name']} (pass --format "
                                f"{src['format']})")
    layout = npy_layout(x.shape, fmt, args.layout, path)
    check_channels(fmt, x.shape[layout.index('C')], path)
    n = len(x)
    for key in ('labels', 'split', 'names', 'lengths'):
        if key in src and np.shape(src[key]) != (n,):
            raise EncodeError(path, f'{key} of shape {np.shape(src[key])}, expected ({n},) for x of shape {x.shape}')
    if 'class_names' in src:
        args.class_names = [str(c) for c in src['class_names']]
        args.num_classes = len(args.class_names)
    labels = check_labels(src['labels'], path, args.label_offset, args.num_classes)
    is_test = split_is_test(src['split'], f'{path} (split)')
    names = [str(s) for s in src['names']] if 'names' in src else [f'{i:06d}' for i in range(n)]
    lengths = src['lengths'] if 'lengths' in src else np.full(n, x.shape[layout.index('T')])
    return [(names[i], int(labels[i]), 'test' if is_test[i] else 'train', ('npz_arrays', str(path), i, layout,
                                                                          int(lengths[i]))) for i in range(n)]


def list_pkl(args, skipped):
    """pyskl: {'split': {PROTOCOL_train: names, PROTOCOL_val (or _test): names}, 'annotations': [{frame_dir,
    label, keypoint (M, T, V, C), keypoint_score (M, T, V)}]}; the protocol is the first in the file
    unless --protocol names one."""
    path, fmt = _generic_input(args)
    if not args.trust_pickle:
        raise EncodeError(path, 'refusing to unpickle: loading a .pkl can execute arbitrary code; pass '
                                '--trust-pickle only for files from a source you trust')
    d = _open_source(('pkl', str(path)))
    prefixes = [k[:-6] for k in d['split'] if k.endswith('_train')]
    proto = args.protocol if args.protocol != 'default' else (prefixes[0] if prefixes else 'default')
    args.protocol = proto
    names = {split: d['split'].get(f'{proto}_train' if split == 'train' else f'{proto}_val',
                                   d['split'].get(f'{proto}_test')) for split in SPLITS}
    if names['train'] is None or names['test'] is None:
        raise EncodeError(path, f"split has no '{proto}_train' and '{proto}_val'/'{proto}_test' (keys: {sorted(d['split'])})")
    index = {a['frame_dir']: k for k, a in enumerate(d['annotations'])}
    if d['annotations']:
        check_channels(fmt, np.shape(d['annotations'][0]['keypoint'])[-1], path)   # a score is not z
    labels = check_labels(np.array([a['label'] for a in d['annotations']]), path, args.label_offset)
    items = []
    for split in SPLITS:
        for n in names[split]:
            if n not in index:
                skipped.append(dict(name=n, split=split, reason='in split but not in annotations'))
                continue
            items.append((n, int(labels[index[n]]), split, ('pkl', str(path), index[n])))
    return items


def list_npy(args, skipped):
    """(N, T, V, C), (N, M, T, V, C) or ST-GCN's (N, C, T, V, M) (npy_layout); --labels: an .npy of N
    labels, or ST-GCN's label .pkl ((sample names, labels), needs --trust-pickle); --names: one
    sample name per line; --split: N values, 'train'/'test' or 0 (train)/1 (test)."""
    path, fmt = _generic_input(args)
    x = _open_source(('npy', str(path)))
    layout = npy_layout(x.shape, fmt, args.layout, path)
    check_channels(fmt, x.shape[layout.index('C')], path)
    if not args.labels or not Path(args.labels).is_file():
        raise EncodeError(args.labels or '--labels', 'labels not found (expected a .npy of N integer labels, or '
                                                     "ST-GCN's label .pkl with --trust-pickle)")
    labels_path, sample_names = Path(args.labels), None
    if labels_path.suffix == '.pkl':
        if not args.trust_pickle:
            raise EncodeError(labels_path, 'refusing to unpickle: loading a .pkl can execute arbitrary code; pass '
                                           '--trust-pickle only for files from a source you trust')
        try:
            with open(labels_path, 'rb') as f:
                names, labels = pickle.load(f, encoding='latin1')[:2]      # ST-GCN: (sample_name, label)
        except Exception as e:
            raise EncodeError(labels_path, f'expected a pickled (sample names, labels) pair as ST-GCN writes '
                                           f'({type(e).__name__}: {e})')
        sample_names, labels = [str(n).split('.')[0] for n in names], np.asarray(labels)
    else:
        try:
            labels = np.load(labels_path)
        except ValueError as e:
            raise EncodeError(labels_path, f'not a readable .npy array of labels ({e})')
    if labels.shape != (len(x),):
        raise EncodeError(args.labels, f'{labels.shape} labels, expected ({len(x)},) for {path}')
    labels = check_labels(labels, args.labels, args.label_offset)
    if args.names:
        sample_names = [line.strip() for line in Path(args.names).read_text().splitlines() if line.strip()]
        if len(sample_names) != len(x):
            raise EncodeError(args.names, f'{len(sample_names)} names, expected {len(x)} (one per sample, one per line)')
    if sample_names is None:
        sample_names = [f'{i:06d}' for i in range(len(x))]
    elif len(sample_names) != len(x):
        raise EncodeError(args.labels, f'{len(sample_names)} sample names, expected {len(x)} for {path}')
    if args.split:
        try:
            split = np.load(args.split)
        except ValueError as e:
            raise EncodeError(args.split, f'not a readable .npy array ({e})')
        if split.shape != (len(x),):
            raise EncodeError(args.split, f'split of shape {split.shape}, expected ({len(x)},)')
        is_test = split_is_test(split, args.split)
    else:
        is_test = np.arange(len(x)) % 5 == 4
        args.split_rule = 'no --split: every 5th sample (index % 5 == 4) is test'
    return [(str(sample_names[i]), int(labels[i]), 'test' if is_test[i] else 'train', ('npy', str(path), i, layout))
            for i in range(len(x))]


def npy_layout(shape, fmt, layout, path):
    """The axis order of an .npy array of skeletons: 'NTVC' (4 axes), 'NMTVC' or ST-GCN / CTR-GCN's
    'NCTVM' (train_data_joint.npy and friends). --layout names it; otherwise it is recognised from
    the shape where only one order fits V = the format's joint count and C = 3 (or 2 for 2D formats)."""
    def fitting(channels):
        return [order for order in ('NTVC', 'NMTVC', 'NCTVM') if len(order) == len(shape) and
                shape[order.index('V')] == fmt['num_joints'] and shape[order.index('C')] in channels]
    channels = (3,) if fmt['geometry'] == 3 else (2, 3)
    fits = fitting(channels)
    if not fits and len(fitting((2, 3))) == 1:
        fits = fitting((2, 3))                                 # the axes are clear: check_channels says what C lacks
    if layout:
        if layout not in ('NTVC', 'NMTVC', 'NCTVM') or len(layout) != len(shape):
            raise EncodeError(f'--layout {layout}', f'expected NTVC (4 axes), NMTVC or NCTVM (5 axes) for {path} of shape {shape}')
        return layout
    if len(fits) != 1:
        found = 'both ' + ' and '.join(fits) if fits else 'none of NTVC, NMTVC, NCTVM'
        raise EncodeError(path, f"array of shape {shape}: {found} fit(s) {fmt['name']} ({fmt['num_joints']} joints, "
                                f"{' or '.join(map(str, channels))} channels); pass --layout")
    return fits[0]


def check_channels(fmt, channels, path):
    """A 3D format needs x, y, z; a 2D format (x, y, score) takes x, y with or without the score."""
    if fmt['geometry'] == 3 and channels != 3:
        raise EncodeError(path, f"{channels} channels per joint, but --format {fmt['name']} is 3D (x, y, z): "
                                'use a 2D format (x, y, score: coco17, openpose18, h36m17) or 3D data')
    if channels not in (2, 3):
        raise EncodeError(path, f'{channels} channels per joint, expected 2 (x, y) or 3 (x, y, z | score)')


def _values_found(values, k=8):
    u = np.unique(values)
    return ', '.join(map(str, u[:k].tolist())) + (f', ... ({len(u)} distinct)' if len(u) > k else '')


def check_labels(labels, where, offset=None, num_classes=None):
    """Labels -> int64 0..K-1, or one line naming the values found: non-integers, negatives, and
    labels without a 0 (1-based?) stop unless --label-offset says what to add."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in 'iub':
        if labels.dtype.kind != 'f' or not np.isfinite(labels).all() or (labels != np.round(labels)).any():
            raise EncodeError(where, f'labels must be integers 0..K-1, found {_values_found(labels)}')
    labels = labels.astype(np.int64) + (offset or 0)
    if len(labels) and labels.min() < 0:
        raise EncodeError(where, f'negative labels after --label-offset {offset or 0}: {_values_found(labels)} '
                                 '(expected 0..K-1)')
    if len(labels) and offset is None and labels.min() > 0:
        raise EncodeError(where, f'no label is 0 (found {_values_found(labels)}): 1-based? pass --label-offset -1 '
                                 '(or --label-offset 0 to keep them as they are)')
    if num_classes and len(labels) and labels.max() >= num_classes:
        raise EncodeError(where, f'labels {_values_found(labels[labels >= num_classes])} outside 0..{num_classes - 1}')
    return labels


def split_is_test(s, path):
    """Split values -> (N,) bool, True for test; any other value (e.g. 'val') stops with the values found."""
    if s.dtype.kind in 'US':
        s = s.astype(str)
        if not np.isin(s, ['train', 'test']).all():
            raise EncodeError(path, f"split values {_values_found(s)}, expected only 'train' and 'test'")
        return s == 'test'
    if s.dtype.kind not in 'iubf' or not np.isin(s, [0, 1]).all():
        raise EncodeError(path, f'split values {_values_found(s)}, expected only 0 (train) and 1 (test)')
    return s.astype(bool)


_SOURCES = {}  # per-process cache of opened single-file sources (generic inputs)


def _open_source(key):
    """An opened generic input, once per process. An .npz member stored uncompressed is memory-mapped
    (no RAM per sample); a compressed one has to be decompressed whole."""
    if key in _SOURCES:
        return _SOURCES[key]
    kind, path = key[0], key[1]
    if kind == 'npy':
        with open(path, 'rb') as f:
            if f.read(4) == b'PK\x03\x04':
                raise EncodeError(path, 'is an .npz archive, not an .npy array: use --data npz (x_train, y_train, '
                                        'x_test, y_test as SGN/CTR-GCN write it)')
        try:
            src = np.load(path, mmap_mode='r')
        except ValueError as e:
            raise EncodeError(path, f'not a readable .npy array ({e})')
        if src.ndim not in (4, 5):
            raise EncodeError(path, f'array of shape {src.shape}, expected (N, T, V, C), (N, M, T, V, C) or '
                                    '(N, C, T, V, M)')
    elif kind == 'npz':
        src = {}
        try:
            with zipfile.ZipFile(path) as z:
                for info in z.infolist():
                    name = info.filename[:-4]
                    if name not in ('x_train', 'y_train', 'x_test', 'y_test') + NPZ_ARRAYS:
                        continue
                    if info.compress_type == zipfile.ZIP_STORED:
                        with z.open(info) as f:
                            version = np.lib.format.read_magic(f)
                            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                                np.lib.format.read_array_header_2_0
                            shape, fortran, dtype = read_header(f)
                            header_len = f.tell()
                        with open(path, 'rb') as raw:  # data offset = local header + name + extra + npy header
                            raw.seek(info.header_offset + 26)
                            n, e = struct.unpack('<HH', raw.read(4))
                        offset = info.header_offset + 30 + n + e + header_len
                        src[name] = np.memmap(path, dtype, 'r', offset, shape, 'F' if fortran else 'C')
                    else:
                        with z.open(info) as f:
                            src[name] = np.lib.format.read_array(f)
        except (zipfile.BadZipFile, ValueError, OSError) as e:
            raise EncodeError(path, f'corrupt .npz ({e})')
        missing = [k for k in ('x_train', 'y_train', 'x_test', 'y_test') if k not in src]
        if missing and 'x' not in src:
            raise EncodeError(path, f'missing arrays {missing} (expected x_train, y_train, x_test, y_test as CTR-GCN/SGN '
                                    'write it, or x, labels, split)')
    else:
        with open(path, 'rb') as f:
            try:
                src = pickle.load(f)  # only reached with --trust-pickle
            except Exception as e:
                raise EncodeError(path, f'corrupt pickle ({type(e).__name__}: {e})')
        if not isinstance(src, dict) or 'split' not in src or 'annotations' not in src:
            raise EncodeError(path, "expected a pyskl dict with 'split' and 'annotations'")
    _SOURCES[key] = src
    return src


def _three_channels(x):
    if x.shape[-1] == 2:  # 2D without score: score channel = 1
        x = np.concatenate([x, np.ones(x.shape[:-1] + (1,), np.float32)], -1)
    return x


LISTERS = dict(ntu60=list_ntu, ntu120=list_ntu, pku1=list_pku, pku2=list_pku, ucla=list_ucla,
               toyota=list_toyota, synthetic=list_synthetic, npz=list_npz, pkl=list_pkl, npy=list_npy)


def load_item(ref, num_joints):
    """Raw skeletons (M, T, J, 3) and, for files that carry it, the label."""
    kind = ref[0]
    if kind == 'ntu':
        return read_ntu_skeleton(ref[1], num_joints), None
    if kind == 'ucla':
        return read_ucla_json(ref[1])
    if kind == 'toyota':
        return read_toyota_json(ref[1], num_joints), None
    if kind == 'pku':
        video = read_pku_video(ref[1])
        seg = video[:, max(ref[2], 0):ref[3] + 1]           # label frames: [start, end], inclusive
        if seg.shape[1] == 0:
            raise EncodeError(ref[1], f'action {ref[2]}-{ref[3]} outside the video ({video.shape[1]} frames)')
        return seg, None
    if kind == 'synthetic':
        return synthetic_sequence(ref[1], ref[2]), None
    if kind == 'npz':
        x = np.asarray(_open_source(('npz', ref[1], ref[2]))[f'x_{ref[3]}'][ref[4]], np.float32)
        per_body = num_joints * 3
        if x.ndim != 2 or x.shape[1] % per_body:
            raise EncodeError(ref[1], f'x_{ref[3]} frames of {x.shape[1:]} values, expected a multiple of {per_body} (bodies x {num_joints} joints x 3)')
        return x.reshape(x.shape[0], -1, num_joints, 3).transpose(1, 0, 2, 3), None
    if kind == 'pkl':
        a = _open_source(('pkl', ref[1]))['annotations'][ref[2]]
        kp = np.asarray(a['keypoint'], np.float32)
        if kp.ndim != 4:
            raise EncodeError(ref[1], f"{a.get('frame_dir')}: keypoint of shape {kp.shape}, expected (M, T, V, C)")
        if 'keypoint_score' in a and kp.shape[-1] == 2:
            kp = np.concatenate([kp, np.asarray(a['keypoint_score'], np.float32)[..., None]], -1)
        return _three_channels(kp), None
    if kind in ('npy', 'npz_arrays'):   # sample i of an array in `layout`; npz_arrays also carries its length
        array = _open_source(('npy', ref[1])) if kind == 'npy' else _open_source(('npz', ref[1], num_joints))['x']
        x = np.asarray(array[ref[2]], np.float32)
        layout = ref[3][1:] if len(ref) > 3 else 'TVC'                      # without N: one sample
        x = x.transpose([layout.index(a) for a in 'MTVC' if a in layout])  # (M, T, V, C) or (T, V, C)
        return _three_channels(x[..., :ref[4], :, :] if len(ref) > 4 else x), None   # frames past it: padding
    raise EncodeError(str(ref), 'unknown item kind')


# ----------------------------------------------------------------------------------------------
# speed only: each piece below gives what its plain equivalent gives, faster, and changes nothing else.
#   ntu_records      NTU .skeleton files read a chunk at a time, every numpy step once for all files
#                    (for one file, per-call overhead is half the cost); plain: ntu_records_plain,
#                    one file line by line with int() and float()
#   parse_decimals   plain decimals parsed eight bytes at a time (SWAR); plain: float() per token
#   _variance_sum    plain: np.var(joints.reshape(-1, 3), axis=0).sum()
#   keep_freed_memory  plain: glibc's defaults
# tests/test_encode_ntu.py checks the first three against their plain equivalents (on NTU files as
# tools/bench.py writes them).

def ntu_records(paths, num_joints=25):
    """The body records of NTU .skeleton files, per path (frames in the file, frame (N,), slot (N,),
    bodyID keys (N, 3) uint64, x y z (N, J, 3) float64) for its N body records in file order, or the
    EncodeError or OSError of that file. The files are joined so that every numpy step runs once for
    all of them: the lines are found with numpy, walked per frame and body for the counts, and the
    x, y, z of every joint line parsed at once (parse_decimals); a line that is not plain
    single-spaced decimals falls back to float()."""
    results, texts = [], []
    for path in paths:
        try:
            data = Path(path).read_bytes()
            texts.append(data if data.endswith(b'\n') else data + b'\n')
            results.append(None)
        except OSError as e:
            results.append(e)
    text = b''.join(texts) + b' ' * NTU_ID_BYTES               # parse_decimals reads 16 bytes from a token
    line_end = np.flatnonzero(np.frombuffer(text, np.uint8) == ord('\n'))
    line_start = np.concatenate([[0], line_end[:-1] + 1])
    lines = line_start.tolist() + [len(text) - NTU_ID_BYTES]
    file_lines = np.searchsorted(line_end, np.cumsum([0] + [len(t) for t in texts])).tolist()  # first line of each
    layout = {}                            # k -> (first line, frames, per body: first joint line, frame, slot)
    for k, first_line, end_line in zip([k for k, r in enumerate(results) if r is None], file_lines, file_lines[1:]):
        own = lines[first_line:end_line + 1]                   # this file's line starts, then its end
        try:
            n_frames, line = int(text[own[0]:own[1]]), 1
            if n_frames < 0:
                raise IndexError
            starts, frame, slot = [], [], []
            for t in range(n_frames):
                n_bodies = int(text[own[line]:own[line + 1]]); line += 1
                for m in range(n_bodies):
                    line += 1                                  # body info line
                    n_joints = int(text[own[line]:own[line + 1]]); line += 1
                    if n_joints != num_joints:
                        raise EncodeError(paths[k], f'body with {n_joints} joints, expected {num_joints} (ntu25)')
                    starts.append(first_line + line); frame.append(t); slot.append(m)
                    line += n_joints
            if line >= len(own):
                raise IndexError
            if not starts:
                raise EncodeError(paths[k], 'no bodies in any frame (expected at least one skeleton)')
            layout[k] = (first_line, n_frames, starts, frame, slot)
        except IndexError:
            results[k] = EncodeError(paths[k], 'truncated .skeleton file (expected frame count, then per frame '
                                               'a body count, per body 10 info values, a joint count and 12 '
                                               'values per joint)')
        except ValueError as e:
            results[k] = EncodeError(paths[k], f'corrupt .skeleton file, expected a count ({e})')
        except EncodeError as e:
            results[k] = e
    if not layout:
        return results
    body_start = np.concatenate([starts for _, _, starts, _, _ in layout.values()])
    joint_lines = (body_start[:, None] + np.arange(num_joints)).ravel()   # (N,) line numbers
    values, ok = np.empty((len(joint_lines), 3)), np.ones(len(joint_lines), bool)
    begin = line_start[joint_lines]
    for c in range(3):                                         # x, y, z: the first three tokens of each line
        values[:, c], lengths, token_ok = parse_decimals(text, begin)
        ok &= token_ok
        begin = begin + lengths + 1
    ok &= begin <= line_end[joint_lines] + 1                   # z ended on its own line
    first_value = np.cumsum([0] + [len(starts) * num_joints for _, _, starts, _, _ in layout.values()])
    first_value = dict(zip(layout, first_value.tolist()))     # k -> its first row of values
    for n in np.flatnonzero(~ok):                              # exponents, tabs, double spaces, junk
        first_three = text[line_start[joint_lines[n]]:line_end[joint_lines[n]]].split()[:3]
        try:
            values[n] = [float(v) for v in first_three]        # fewer than 3: ValueError too
        except ValueError:
            k = max(k for k in layout if first_value[k] <= n)
            if results[k] is None:
                results[k] = EncodeError(paths[k], f'corrupt .skeleton file, line {joint_lines[n] - layout[k][0] + 1} '
                                                   f'should start with x y z numbers, got '
                                                   f'{b" ".join(first_three).decode(errors="replace")!r}')
    info_start, info_end = line_start[body_start - 2], line_end[body_start - 2]   # the line before the joint count
    ids = np.frombuffer(text, np.uint8)[info_start[:, None] + np.arange(NTU_ID_BYTES)]    # (N, 24)
    for n in np.flatnonzero(ids[:, 0] <= ord(' ')):           # a line starting with whitespace: one by one
        token = (text[info_start[n]:info_end[n]].split()[:1] or [b''])[0][:NTU_ID_BYTES]
        ids[n] = np.frombuffer(token.ljust(NTU_ID_BYTES), np.uint8)
    ids *= np.cumsum(ids <= ord(' '), axis=1) == 0            # keep the bytes before the first space
    ids = ids.view('<u8')                                      # (N, 3) bodyID keys
    for k, (_, n_frames, starts, frame, slot) in layout.items():
        if results[k] is None:
            first, n = first_value[k] // num_joints, len(starts)            # its first body, its bodies
            results[k] = (n_frames, np.array(frame), np.array(slot), ids[first:first + n],
                          values[first * num_joints:(first + n) * num_joints].reshape(n, num_joints, 3))
    return results


def ntu_records_plain(path):
    """ntu_records of one valid file, the plain way: line by line, int() and float()."""
    lines = Path(path).read_bytes().split(b'\n')
    n_frames, line = int(lines[0]), 1
    frame, slot, ids, values = [], [], [], []
    for t in range(n_frames):
        n_bodies, line = int(lines[line]), line + 1
        for m in range(n_bodies):
            body_id = lines[line].split()[0][:NTU_ID_BYTES]
            n_joints, line = int(lines[line + 1]), line + 2
            frame.append(t), slot.append(m)
            ids.append(np.frombuffer(body_id.ljust(NTU_ID_BYTES, b'\0'), '<u8'))
            values.append([[float(v) for v in lines[line + j].split()[:3]] for j in range(n_joints)])
            line += n_joints
    return n_frames, np.array(frame), np.array(slot), np.array(ids), np.array(values)


# NTU .skeleton numbers are parsed eight bytes at a time (SWAR, as simdjson does): a token's 16
# bytes are read as two little-endian uint64 words and every step below acts on all tokens at once.
_HIGH = np.uint64(0x8080808080808080)                          # the high bit of every byte
_POW10 = 10 ** np.arange(16, dtype=np.uint64)
_WORD = np.array([[0], [8]])                                   # byte offset of each word of a token


def _every_byte(value):
    return np.uint64(value * 0x0101010101010101)


def _bytes_below(words, value):
    """High bit of each byte below value (exact for bytes < 0x80)."""
    return ~((words | _HIGH) - _every_byte(value)) & _HIGH


def _count_bytes(high_bits):
    """How many bytes of each word have their high bit set."""
    return ((high_bits >> np.uint64(7)) * np.uint64(0x0101010101010101)) >> np.uint64(56)


def _before_first(high_bits):
    """Mask of the bytes before the first byte whose high bit is set (all 8 bytes if none)."""
    return ((high_bits & (~high_bits + np.uint64(1))) >> np.uint64(7)) - np.uint64(1)


def parse_decimals(text, starts):
    """The tokens (up to the next whitespace) at byte offsets of text, as plain decimals
    ([+-]digits[.digits] or [+-].digits, at most 15 characters) -> (float64 values, lengths, ok).
    Exact: the digits become one integer below 10^16 and a single division by a power of ten places
    the dot, as float() does. Tokens that are not plain decimals (an exponent, a stray character,
    too long) come back with ok False, for the caller to convert one by one. text must end in 16
    spaces."""
    words = np.ndarray((len(text) - 7,), '<u8', text, 0, (1,))[starts + _WORD]   # (2, K): bytes 0-7, 8-15
    inside = _before_first(_bytes_below(words, ord(' ') + 1))  # (2, K): the bytes before whitespace
    inside[1] &= -(inside[0] >> np.uint64(63))                 # word 1 only if word 0 is all token
    lengths = _count_bytes(inside & _HIGH).sum(0).astype(np.intp)
    words &= inside
    shifted = words ^ _every_byte(ord('0'))                    # digit bytes become their values 0-9
    digits = _bytes_below(shifted, 10) & inside
    dots = _bytes_below(words ^ _every_byte(ord('.')), 1) & inside
    first = words[0] & np.uint64(0xFF)
    negative = first == ord('-')
    sign = (negative | (first == ord('+'))).astype(np.uint64) << np.uint64(7)
    ok = ((digits[0] | dots[0] | sign) == inside[0] & _HIGH) & ((digits[1] | dots[1]) == inside[1] & _HIGH)
    ok &= ((words[0] | words[1]) & _HIGH) == 0                 # ASCII only
    ok &= (digits[0] | digits[1]) != 0                         # at least one digit
    ok &= (_count_bytes(dots).sum(0) <= 1) & (lengths <= 15)
    before_dot = _count_bytes(_before_first(dots) & _HIGH)     # (2, K), 8 where a word has no dot
    dot = np.minimum((before_dot[0] + (before_dot[0] >> np.uint64(3)) * before_dot[1]).astype(np.intp), lengths)
    v = shifted & ((digits >> np.uint64(7)) * np.uint64(0xFF))         # digit values, 0 elsewhere
    v = (v * np.uint64(10 * 2 ** 8 + 1)) >> np.uint64(8)               # pairs of digits
    v = ((v & np.uint64(0x00FF00FF00FF00FF)) * np.uint64(100 * 2 ** 16 + 1)) >> np.uint64(16)   # fours
    v = ((v & np.uint64(0x0000FFFF0000FFFF)) * np.uint64(10000 * 2 ** 32 + 1)) >> np.uint64(32)  # eights
    v = v[0] * np.uint64(10 ** 8) + v[1]                       # sum of digit_c * 10^(15 - c), the dot a 0
    fraction_place = _POW10[15 - dot]                          # 10^(digits after the dot, padding included)
    whole, fraction = np.divmod(v, fraction_place * np.uint64(10))
    value = (whole * fraction_place + fraction).astype(np.float64) / fraction_place.astype(np.float64)
    return np.where(negative, -value, value), lengths, ok


def _variance_sum(joints):
    """np.var(joints.reshape(-1, 3), axis=0).sum() bit for bit, 1.7x faster: that reduction over
    axis 0 adds each column's values one after another in float32, which is what cumsum along a
    contiguous copy does (checked equal on 3000 random arrays with numpy 1.23 and 2.4)."""
    columns = np.ascontiguousarray(joints.reshape(-1, 3).T)             # (3, n * J)
    count = np.float32(columns.shape[1])
    deviation = columns - np.cumsum(columns, axis=1)[:, -1:] / count
    deviation *= deviation
    return (np.cumsum(deviation, axis=1)[:, -1] / count).sum()


def keep_freed_memory():
    """glibc hands freed blocks of 128 KB and more back to the kernel at once; reading and encoding
    a file allocates and frees a few MB, so each file paid ~500 fresh page faults (on a VM: 2 ms,
    half of all the time). Keep them in the heap instead (process-wide, so only for this script;
    workers inherit it through fork). No-op without glibc."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-1, 256 << 20)                            # M_TRIM_THRESHOLD
        libc.mallopt(-3, 64 << 20)                             # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


# ----------------------------------------------------------------------------------------------
# the driver: workers, outputs, previews, the command line

@contextlib.contextmanager
def atomic(path):
    """Every final file (the .npy and .txt outputs, meta.json, the previews) is written under a
    temporary name beside it (.NAME.partial), renamed when the block ends and removed if it fails:
    a killed or failed run never leaves a file that looks finished."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.partial')
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def progress(iterable, total, desc, show=True):
    """Yields from iterable with a tqdm bar when stderr is a terminal; otherwise (a log) a line every 30 s."""
    if not show:
        yield from iterable
        return
    bar = None
    if sys.stderr.isatty():
        with contextlib.suppress(ImportError):
            from tqdm import tqdm
            bar = tqdm(total=total, desc=desc, file=sys.stderr, mininterval=1.0, disable=total < 200)
    t0 = last = time.time()
    for done, x in enumerate(iterable, 1):
        yield x
        if bar is not None:
            bar.update(1)
        elif time.time() - last > 30:
            last = time.time()
            rate = done / (last - t0)
            print(f'encode.py: {desc} {done}/{total} ({rate:.0f} samples/s, {(total - done) / rate:.0f} s left)',
                  file=sys.stderr)
    if bar is not None:
        bar.close()


_CTX = {}


def _init_worker(ctx):
    _CTX.clear()
    _CTX.update(ctx, files={})                                 # files: output path -> open descriptor


def _encode_items(jobs):
    """Worker: [(row, item, outputs)] -> [(name, label, {modality: (2, 3) per-channel sum and sum of
    squares} or None, error message or None, {denoising rule: count removed})]. The float16 images go
    straight from here into row `row` of the split's output files with os.pwrite: nothing crosses the
    pool's pipe but a few numbers, nothing is mapped, so memory stays flat however long the split.
    The sums are of the float32 images. NTU files come in chunks and are read together
    (read_ntu_skeletons)."""
    refs = [item[3] for _, item, _ in jobs]
    ntu = [k for k, ref in enumerate(refs) if ref[0] == 'ntu']
    removed = {}
    loaded = read_ntu_skeletons([refs[k][1] for k in ntu], _CTX['fmt']['num_joints'],
                                bodies=_CTX.get('ntu_bodies', 'sgn'), notes=removed)
    loaded = dict(zip(ntu, loaded))
    removed = {ntu[k]: r for k, r in removed.items()}
    return [_encode_item(job, loaded.get(k)) + (removed.get(k, {}),) for k, job in enumerate(jobs)]


def _encode_item(job, loaded=None):
    """One item of _encode_items; loaded: its skeletons (or the error reading them) if already read."""
    row, (name, label, split, ref), outputs = job
    try:
        if isinstance(loaded, Exception):
            raise loaded
        bodies, file_label = (loaded, None) if loaded is not None else load_item(ref, _CTX['fmt']['num_joints'])
        imgs = encode_sequence(bodies, _CTX['fmt'], _CTX['modalities'], _CTX['size'],
                               where=ref[1] if len(ref) > 1 else name, **_CTX.get('prep', {}))
        sums = {}
        for m, image in imgs.items():
            path, offset = outputs[m]
            if path not in _CTX['files']:
                _CTX['files'][path] = os.open(path, os.O_WRONLY)
            stored = image.astype(np.float16)
            if os.pwrite(_CTX['files'][path], stored, offset + row * stored.nbytes) != stored.nbytes:
                raise OSError(f'{path}: short write (disk full?)')
            image = image.reshape(3, -1)                      # (3, S*S); float32 sums: ~2e-6 relative
            sums[m] = np.stack([image.sum(1), np.einsum('cp,cp->c', image, image)]).astype(np.float64)
        return name, label if label is not None else file_label, sums, None
    except EncodeError as e:
        return name, label, None, str(e)
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        return name, label, None, f'{ref[1] if len(ref) > 1 else name}: unreadable sample ({type(e).__name__}: {e})'


def create_outputs(paths, n, size):
    """Empty .npy files of n float16 (3, size, size) images at paths {modality: path} ->
    {modality: (path, byte offset of row 0)} for the workers to write into."""
    outputs = {}
    for m, path in paths.items():
        with open(path, 'wb') as f:
            np.lib.format.write_array_header_1_0(f, dict(descr='<f2', fortran_order=False, shape=(n, 3, size, size)))
            outputs[m] = (str(path), f.tell())
            f.truncate(f.tell() + n * 3 * size * size * 2)
    return outputs


def write_previews(out_dir, k, modalities, class_names=None):
    """K train samples per modality as PNGs, and grid.png: one row per sample, from as many classes as
    possible, one column per stream, each tile captioned with sample name, class and stream."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise EncodeError('--preview', 'the previews need Pillow (pip install pillow)')
    pdir = Path(out_dir) / 'preview'
    pdir.mkdir(exist_ok=True)
    names = (Path(out_dir) / 'train_names.txt').read_text().split()
    labels = np.load(Path(out_dir) / 'train_labels.npy')
    rank = np.zeros(len(labels), np.int64)                     # position of each sample within its class
    for c in np.unique(labels):
        rank[labels == c] = np.arange((labels == c).sum())
    picks = np.lexsort((labels, rank))[:k]                     # first of every class, then second, ...
    font = ImageFont.load_default()
    captions = [[names[i], f'{class_names[labels[i]] if class_names else f"class {labels[i]}"}, {m}']
                for i in picks for m in modalities]
    size = np.load(Path(out_dir) / f'train_{modalities[0]}.npy', mmap_mode='r').shape[-1]
    side = size * max(1, 128 // size)
    measure = ImageDraw.Draw(Image.new('RGB', (1, 1)))
    width = max([side] + [int(measure.textlength(t, font=font)) for caption in captions for t in caption])
    grid = Image.new('RGB', (len(modalities) * (width + 8) + 8, 30 + len(picks) * (side + 40)), 'white')
    draw = ImageDraw.Draw(grid)
    draw.text((8, 8), f'{len(picks)} train samples, {len(np.unique(labels[picks]))} classes; '
                      'each image: time down, joints across, x y z as R G B', fill='black', font=font)
    for r, i in enumerate(picks):
        for c, m in enumerate(modalities):
            image = np.asarray(np.load(Path(out_dir) / f'train_{m}.npy', mmap_mode='r')[i], np.float64)   # (3, S, S)
            lo, hi = image.min(axis=(1, 2), keepdims=True), image.max(axis=(1, 2), keepdims=True)
            image = (image - lo) / np.where(hi > lo, hi - lo, 1.0)                  # each channel to 0-1
            tile = Image.fromarray(np.round(image * 255).astype(np.uint8).transpose(1, 2, 0))   # (S, S, 3) RGB
            with atomic(pdir / f'{r:02d}_{names[i]}_{m}.png') as tmp:
                tile.save(tmp, format='PNG')
            x, y = 8 + c * (width + 8), 30 + r * (side + 40)
            grid.paste(tile.resize((side, side), Image.NEAREST), (x, y))
            for line, text in enumerate(captions[r * len(modalities) + c]):
                draw.text((x, y + side + 3 + 13 * line), text, fill='black', font=font)
    with atomic(pdir / 'grid.png') as tmp:
        grid.save(tmp, format='PNG')


def get_args(argv=None):
    p = argparse.ArgumentParser('S2I encoding: skeleton datasets -> (3, S, S) images', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group('data')
    g.add_argument('--data', default='synthetic',
                   help='ntu60 | ntu120 | pku1 | pku2 | ucla | toyota | synthetic | npz | pkl | npy')
    g.add_argument('--root', default=None, help='dataset directory (layouts: docs/DATA.md)')
    g.add_argument('--protocol', default=None, help='ntu60: xsub|xview, ntu120: xsub|xset, pku: xsub, '
                                                    'ucla: xview, toyota: xsub|xview1 (default: the first)')
    g.add_argument('--ignore-list', default=None, help='NTU missing-skeleton list (default: the official '
                                                       'file if found in --root or its parent)')
    g.add_argument('--split-file', default=None, help='PKU-MMD cross-subject split file (default: '
                                                      '*cross*sub*.txt in --root)')
    g = p.add_argument_group('generic inputs (--data npz|pkl|npy)')
    g.add_argument('--input', default=None, help='CTR-GCN/SGN .npz, pyskl .pkl or (N, T, J, C) .npy')
    g.add_argument('--format', default=None, help='joints.yaml key of the input skeletons')
    g.add_argument('--labels', default=None, help='.npy: N integer labels (0-based)')
    g.add_argument('--split', default=None, help='.npy: N of 0/1 or train/test (default: every 5th sample is test)')
    g.add_argument('--trust-pickle', action='store_true', help='allow unpickling --input .pkl (can run code)')
    g.add_argument('--name', default=None, help='output dataset name (default: --data)')
    g.add_argument('--metric', default=None, choices=('top1', 'mean_class_accuracy'),
                   help="how the protocol is scored, kept in meta.json for the summaries (default: "
                        "mean_class_accuracy for toyota, as Das et al. 2019 and the paper's Tables 8, 9; top1 elsewhere)")
    g.add_argument('--layout', default=None, choices=('NTVC', 'NMTVC', 'NCTVM'),
                   help='.npy axis order (default: recognised from the shape; NCTVM = ST-GCN/CTR-GCN arrays)')
    g.add_argument('--names', default=None, help='.npy: text file of N sample names (default: 000000, 000001, ...)')
    g.add_argument('--label-offset', type=int, default=None,
                   help='added to every label (e.g. -1 for 1-based labels); labels must then be 0..K-1')
    g.add_argument('--scale-coords', type=float, default=1.0,
                   help='multiply coordinates (not scores) by this, e.g. 0.001 for millimetres -> metres')
    g = p.add_argument_group('reference preprocessing (docs/READINGS.md: where the paper is ambiguous)')
    g.add_argument('--ntu-bodies', default='sgn', choices=('sgn', 'slot'),
                   help='sgn: people by bodyID, denoised and ordered as SGN\'s chain (paper 4.2); '
                        'slot: per frame slot, as ST-GCN\'s ntu_gendata')
    g.add_argument('--motion', default='per-actor', choices=('per-actor', 'interleaved'),
                   help='per-actor: each person\'s own frame difference; interleaved: next row minus this row')
    g.add_argument('--rescale', default='auto', choices=('auto', 'minmax', 'none'),
                   help='auto: minmax for ucla (Cheng et al. 2020: each axis to [-1, 1]), none elsewhere')
    g = p.add_argument_group('encoding')
    g.add_argument('--modality', default='all', choices=('joint', 'bone', 'motion', 'all'),
                   help='streams to write (default all three)')
    g.add_argument('--size', type=int, default=224, help='image side S (224: ViT-B/16 input)')
    g.add_argument('--two-person', default='interleave', choices=('interleave', 'concat', 'first'),
                   help='interleave: SGN / paper Sec. 4.2 (two-person frame -> two frames)')
    g.add_argument('--joints', default=None, help='more skeleton formats: added to joints.yaml, same names replaced')
    g.add_argument('--synthetic-train', type=int, default=60, help='synthetic: train samples per class')
    g.add_argument('--synthetic-test', type=int, default=20, help='synthetic: test samples per class')
    g.add_argument('--seed', type=int, default=0, help='synthetic data seed')
    g = p.add_argument_group('output')
    g.add_argument('--out', default='data', help='output root: {out}/{name}/{protocol}/')
    g.add_argument('--workers', type=int, default=1, help='processes that parse and encode')
    g.add_argument('--preview', type=int, default=0,
                   help='write K train samples (spread over the classes) as PNGs and a labelled preview/grid.png')
    g.add_argument('--strict', action='store_true', help='a corrupt sample is fatal instead of skipped')
    g.add_argument('--overwrite', action='store_true', help='replace the output of a different dataset in the same folder')
    g.add_argument('--quiet', action='store_true', help='no progress output')
    return p.parse_args(argv)


def encode(args):
    """The whole run for parsed args; raises EncodeError on bad input. Returns meta.json's dict."""
    t0 = time.time()
    if args.data not in DATASETS:
        raise EncodeError(f'--data {args.data}', f'unknown dataset (expected one of {", ".join(DATASETS)})')
    fmt_key, protocols = DATASETS[args.data]
    if fmt_key is None:
        if not args.format:
            raise EncodeError(f'--data {args.data}', 'generic input needs --format KEY (a joints.yaml format)')
        fmt_key, protocols = args.format, None
        args.protocol = args.protocol or 'default'
    else:
        if args.data != 'synthetic' and not args.root:
            raise EncodeError(f'--data {args.data}', '--root is required (the dataset directory)')
        args.protocol = args.protocol or protocols[0]
        if args.protocol not in protocols:
            raise EncodeError(f'--protocol {args.protocol}', f'unknown protocol for {args.data} (expected one of {list(protocols)})')
    fmt = get_format(fmt_key, args.joints)
    if args.size < PATCH:
        raise EncodeError(f'--size {args.size}', f'images must be at least one {PATCH} x {PATCH} ViT patch '
                                                 '(224 in the paper)')
    if not np.isfinite(args.scale_coords) or args.scale_coords <= 0:
        raise EncodeError(f'--scale-coords {args.scale_coords}', 'expected a positive factor (0.001: mm -> m)')
    modalities = list(MODALITIES) if args.modality == 'all' else [args.modality]
    args.class_names, args.num_classes, args.split_rule = None, None, None
    warnings, skipped, removed = [], [], {}
    rescale = args.rescale if args.rescale != 'auto' else 'minmax' if args.data == 'ucla' else 'none'
    ctx = dict(fmt=fmt, modalities=modalities, size=args.size, ntu_bodies=args.ntu_bodies,
               prep=dict(two_person=args.two_person, rescale=rescale, scale=args.scale_coords, motion=args.motion))
    _init_worker(ctx)
    # the pool starts before the dataset is listed, so that the forked workers do not each inherit a
    # copy of the listing (3 x 70 MB for NTU-120)
    with (mp.get_context('spawn' if sys.platform == 'win32' else 'fork').Pool(args.workers, _init_worker, (ctx,))
          if args.workers > 1 else contextlib.nullcontext()) as pool:
        items = LISTERS[args.data](args, skipped)              # may set args.protocol (pkl), class_names
        out_dir = Path(args.out) / (args.name or args.data) / args.protocol
        source = str(Path(args.input or args.root or args.data).resolve()) if args.data != 'synthetic' else 'synthetic'
        meta_path = out_dir / 'meta.json'
        if meta_path.is_file() and not args.overwrite:        # e.g. two generic inputs without --name
            with contextlib.suppress(ValueError):              # an unreadable meta.json: not ours to judge
                old = json.loads(meta_path.read_text())
                if (old.get('source'), old.get('input', source)) != (args.data, source):
                    raise EncodeError(meta_path.parent, f"holds the output of --data {old.get('source')} "
                                                        f"{old.get('input', '')} (not {args.data} {source}): pass "
                                                        '--name NAME for another folder, or --overwrite to replace it')
        if args.data in ('npz', 'npy', 'pkl', 'toyota'):
            # The augmentation magnitudes (--translate 0.1, --noise-std 0.01) and the NTU/NW-UCLA data are
            # in metres. A body seen by a depth camera lies within a few metres of it, so the median |x|,
            # |y|, |z| of its joints is below 5 in metres and above 100 in millimetres; above
            # MILLIMETRES_MEDIAN, on up to 32 samples spread over the list, a warning says so.
            values = []
            for it in items[::max(1, len(items) // 32)][:32]:
                try:
                    x = load_item(it[3], fmt['num_joints'])[0][..., :fmt['geometry']] * args.scale_coords
                except (EncodeError, OSError, ValueError, KeyError, IndexError, TypeError):
                    continue                                   # reported when encoded
                values.append(np.abs(x[x != 0]))
            median = float(np.median(np.concatenate(values))) if values and sum(map(len, values)) else 0.0
            if median > MILLIMETRES_MEDIAN:
                warnings.append(f'median |coordinate| {median:.1f} over {len(values)} samples looks like millimetres '
                                '(or pixels), but the augmentation magnitudes are in metres: pass --scale-coords '
                                '0.001 for millimetres')
        created = [d for d in [out_dir, *out_dir.parents] if not d.exists()]   # removed again on failure
        out_dir.mkdir(parents=True, exist_ok=True)
        if meta_path.exists():
            meta_path.unlink()                                 # the old output is no longer complete
        counts, sums, row_bytes = {}, {}, 3 * args.size * args.size * 2
        try:
            with contextlib.ExitStack() as finals:             # every output renamed at the end, or removed
                for split in SPLITS:
                    split_items = [it for it in items if it[2] == split]
                    if not split_items:
                        raise EncodeError(args.root or args.input or args.data,
                                          f'no {split} samples for protocol {args.protocol}')
                    n = len(split_items)
                    outputs = create_outputs({m: finals.enter_context(atomic(out_dir / f'{split}_{m}.npy'))
                                              for m in modalities}, n, args.size)
                    # the workers (or this process) load, encode and write chunks of 8 items straight into
                    # their rows; what comes back is a few numbers per item, so nothing piles up
                    jobs = [(row, item, outputs) for row, item in enumerate(split_items)]
                    chunks = (pool.imap if pool is not None else map)(_encode_items,
                                                                      [jobs[k:k + 8] for k in range(0, n, 8)])
                    sums[split] = {m: np.zeros((2, 3), np.float64) for m in modalities}   # per channel: sum, squares
                    labels, names, rows = [], [], []           # rows: the item positions that were written
                    try:
                        for row, (name, label, item_sums, err, item_removed) in enumerate(
                                progress((r for chunk in chunks for r in chunk), n, split, not args.quiet)):
                            if err is not None:
                                if args.strict:
                                    raise EncodeError(err.split(': ', 1)[0], err.split(': ', 1)[-1])
                                skipped.append(dict(name=name, split=split, reason=err))
                                continue
                            for m in modalities:
                                sums[split][m] += item_sums[m]
                            for rule, count in item_removed.items():
                                removed[rule] = removed.get(rule, 0) + count
                            labels.append(int(label)), names.append(name), rows.append(row)
                    finally:
                        for fd in _CTX['files'].values():
                            os.close(fd)
                        _CTX['files'].clear()
                    counts[split] = len(rows)
                    for path, offset in outputs.values() if len(rows) < n else []:
                        fd = os.open(path, os.O_RDWR)          # skipped items: the rows move up over the gaps
                        try:
                            for new, was in enumerate(rows):
                                if new != was:
                                    image = os.pread(fd, row_bytes, offset + was * row_bytes)
                                    os.pwrite(fd, image, offset + new * row_bytes)
                            shape = (len(rows), 3, args.size, args.size)   # the header rewritten at its length
                            header = repr({'descr': '<f2', 'fortran_order': False, 'shape': shape}).ljust(offset - 11)
                            os.pwrite(fd, (header + '\n').encode('latin1'), 10)   # after magic, version, length
                            os.ftruncate(fd, offset + len(rows) * row_bytes)
                        finally:
                            os.close(fd)
                    with open(finals.enter_context(atomic(out_dir / f'{split}_labels.npy')), 'wb') as f:
                        np.save(f, np.array(labels, np.int64))
                    with open(finals.enter_context(atomic(out_dir / f'{split}_names.txt')), 'w') as f:
                        f.write(''.join(f'{s}\n' for s in names))
                    if not rows:
                        first = next(s['reason'] for s in skipped if s['split'] == split)
                        raise EncodeError(args.root or args.input, f'no valid {split} samples (first error: {first})')
                # per-stream channel mean and std of the train split; a coordinate channel whose std is
                # zero (2D data given to a 3D format: z all zero) stops here, before anything is renamed
                mean, std, pixels = {}, {}, counts['train'] * args.size * args.size
                for m, (total, squares) in sums['train'].items():
                    mu = total / pixels
                    mean[m] = mu.tolist()
                    std[m] = np.sqrt(np.maximum(squares / pixels - mu * mu, 0.0)).tolist()
                    for c in range(fmt['geometry']):
                        if std[m][c] < 1e-6:
                            raise EncodeError(args.input or args.root or args.data,
                                              f"channel {fmt['channels'][c]} of the {m} stream is constant over the "
                                              f"train split (std {std[m][c]:.1e}): 2D data given to the 3D format "
                                              f"{fmt['name']}? use a 2D format (x, y, score) or data with "
                                              f"{fmt['channels'][c]}")
        finally:
            if not (out_dir / 'train_labels.npy').exists():      # failed before any output: no empty folders
                for d in created:
                    with contextlib.suppress(OSError):
                        d.rmdir()
    labels = np.concatenate([np.load(out_dir / f'{s}_labels.npy') for s in SPLITS])
    num_classes = len(args.class_names) if args.class_names else args.num_classes or \
        max(NUM_CLASSES.get(args.data, 0), int(labels.max()) + 1)
    missing = sorted(set(range(num_classes)) - set(np.load(out_dir / 'train_labels.npy').tolist()))
    if missing:
        names = [args.class_names[c] for c in missing] if args.class_names else missing
        warnings.append(f'{len(missing)} of {num_classes} classes have no training sample: {names[:20]}'
                        + (' ...' if len(missing) > 20 else ''))
    if args.split_rule:
        warnings.append(args.split_rule)
    if args.preview:
        write_previews(out_dir, args.preview, modalities, args.class_names)
    elapsed = time.time() - t0
    metric = args.metric or ('mean_class_accuracy' if 'toyota' in (args.data, args.name) else 'top1')
    meta = dict(dataset=args.name or args.data, source=args.data, input=source, format=fmt['name'],
                protocol=args.protocol, metric=metric, num_classes=num_classes, class_names=args.class_names,
                size=args.size, modalities=modalities, channels=fmt['channels'], mirror=fmt['mirror'], counts=counts,
                mean=mean, std=std,
                skipped=skipped, warnings=warnings, two_person=args.two_person, motion=args.motion,
                rescale=rescale, ntu_bodies=args.ntu_bodies if args.data in ('ntu60', 'ntu120') else None,
                denoising_removed=removed if args.data in ('ntu60', 'ntu120') else None,
                seconds=round(elapsed, 2), args={k: v for k, v in vars(args).items() if k != 'class_names'})
    with atomic(meta_path) as tmp:                             # last: its presence means complete
        tmp.write_text(json.dumps(meta, indent=1))
    for w in warnings:
        print(f'encode.py: warning: {w}', file=sys.stderr)
    if not args.quiet:
        n = sum(counts.values())
        print(f'encode.py: {out_dir}: train {counts["train"]}, test {counts["test"]}, {num_classes} classes, '
              f'{len(skipped)} skipped, {n / elapsed:.0f} samples/s', file=sys.stderr)
    return meta


def main(args):
    keep_freed_memory()
    try:
        return encode(args)
    except EncodeError as e:
        sys.exit(f'encode.py: {e}')


if __name__ == '__main__':
    main(get_args())
