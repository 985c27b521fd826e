"""Encoded datasets written straight in the layout encode.py writes (docs/DATA.md), for the training-stage tests.

Each class is a different smooth pattern over (time, joint), so a tiny ViT separates them quickly.
"""
import json
import os

import numpy as np

import encode


def real_data(*parts):
    """A path under $S2I_DATA, the folder holding the real datasets (nw_ucla/, msr_action3d/), or None
    when the variable is unset or the path is not there: the tests that need it then skip."""
    root = os.environ.get('S2I_DATA')
    path = os.path.join(root, *parts) if root else None
    return path if path and os.path.exists(path) else None


def stage_args(data_root, *extra):
    """The command line the training-stage tests start from: the synthetic dataset encoded under
    data_root, the tiny ViT, no loader processes; `extra` follows (a flag given again there wins)."""
    return ['--data', 'synthetic', '--data-root', str(data_root), '--model', 'vit_test', '--num-workers', '0', *extra]


def easy_images(labels, size, seed):
    """(N, 3, S, S) float32: class c -> a wave whose frequency and channel depend on c, plus noise."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 1, size)[:, None]
    cols = np.linspace(0, 1, size)[None, :]
    images = rng.normal(0, 0.1, (len(labels), 3, size, size))
    for i, label in enumerate(labels):
        phase = rng.uniform(0, 2 * np.pi)
        images[i, label % 3] += np.sin(2 * np.pi * (label // 3 + 1) * rows + phase) * (1 + cols)
    return images.astype(np.float32)


def write_encoded(root, data='synthetic', protocol='xsub', num_classes=4, train_per_class=16,
                  test_per_class=8, size=32, modalities=('joint', 'bone', 'motion'), seed=0,
                  format='ntu25'):
    """Write {root}/{data}/{protocol}/ like encode.py does; returns that folder."""
    folder = os.path.join(root, data, protocol)
    os.makedirs(folder, exist_ok=True)
    counts, mean, std = {}, {}, {}
    for split_index, (split, per_class) in enumerate([('train', train_per_class), ('test', test_per_class)]):
        labels = np.repeat(np.arange(num_classes), per_class).astype(np.int64)
        np.save(os.path.join(folder, f'{split}_labels.npy'), labels)
        with open(os.path.join(folder, f'{split}_names.txt'), 'w') as f:
            f.write(''.join(f'{split}{i:04d}\n' for i in range(len(labels))))
        counts[split] = len(labels)
        for m, modality in enumerate(modalities):
            images = easy_images(labels, size, seed + 10 * split_index + m) * (m + 1)
            np.save(os.path.join(folder, f'{split}_{modality}.npy'), images.astype(np.float16))
            if split == 'train':
                mean[modality], std[modality] = images.mean((0, 2, 3)).tolist(), images.std((0, 2, 3)).tolist()
    meta = {'dataset': data, 'format': format, 'protocol': protocol, 'num_classes': num_classes,
            'size': size, 'modalities': list(modalities), 'channels': ['x', 'y', 'z'],
            'mirror': encode.get_format(format)['mirror'], 'counts': counts,
            'mean': mean, 'std': std, 'skipped': [], 'args': {}}
    with open(os.path.join(folder, 'meta.json'), 'w') as f:
        json.dump(meta, f)
    return folder
