"""ensemble.py: hand-made logits give the hand-computed fused accuracy; mismatched runs fail clearly."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import ensemble


def write_run(folder, logits, labels, names):
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, 'test_logits.npy'), np.asarray(logits, dtype=np.float32))
    np.save(os.path.join(folder, 'test_labels.npy'), np.asarray(labels, dtype=np.int64))
    with open(os.path.join(folder, 'test_names.txt'), 'w') as f:
        f.write(''.join(f'{n}\n' for n in names))
    return str(folder)


LABELS = [0, 1, 2, 0]
NAMES = ['a', 'b', 'c', 'd']
# 3 classes, 4 samples. Joint: right on a, b; bone: right on b, c; motion: right on a, c.
# Sample d (class 0): joint says 1 mildly, bone says 0 strongly, motion says 2 mildly.
JOINT = [[5, 0, 0], [0, 5, 0], [0, 5, 0], [0, 1, 0]]
BONE = [[0, 5, 0], [0, 5, 0], [0, 0, 5], [9, 0, 0]]
MOTION = [[5, 0, 0], [5, 0, 0], [0, 0, 5], [0, 0, 1]]


def test_fused_accuracy_hand_computed(tmp_path):
    runs = [write_run(tmp_path / m, x, LABELS, NAMES) for m, x in [('joint', JOINT), ('bone', BONE), ('motion', MOTION)]]
    out = tmp_path / 'ens.json'
    result = ensemble.main(ensemble.get_args(runs + ['--output', str(out)]))
    # streams: 2 of 4 right each (d is wrong for joint and motion; bone gets d right but a wrong)
    assert [s['top1'] for s in result['streams'].values()] == [50.0, 75.0, 50.0]
    # mean over classes 0 (a, d), 1 (b), 2 (c) of each class's top-1: joint (50 + 100 + 0) / 3,
    # bone (50 + 100 + 100) / 3, motion (50 + 0 + 100) / 3
    assert [s['mean_class_accuracy'] for s in result['streams'].values()] == pytest.approx([50.0, 250 / 3, 50.0])
    # fused: a -> 0 (two votes of 5), b -> 1, c -> 2, d -> 0 (bone's 9 dominates): all right
    assert result['fused']['top1'] == 100.0
    assert result['fused']['top5'] == 100.0 and result['fused']['mean_class_accuracy'] == 100.0
    assert json.loads(out.read_text())['fused']['top1'] == 100.0
    assert result['num_classes'] == 3                                   # for the chance level in results.py
    # weights: only the joint stream counts -> the joint accuracy
    result = ensemble.main(ensemble.get_args(runs + ['--weights', '1', '0', '0', '--output', str(out)]))
    assert result['fused']['top1'] == 50.0


def test_mismatched_runs_fail_with_the_run_named(tmp_path):
    joint = write_run(tmp_path / 'joint', JOINT, LABELS, NAMES)
    reordered = write_run(tmp_path / 'bone', BONE, LABELS, ['b', 'a', 'c', 'd'])
    relabelled = write_run(tmp_path / 'motion', MOTION, [0, 1, 2, 2], NAMES)
    with pytest.raises(SystemExit, match='bone.*differ'):
        ensemble.main(ensemble.get_args([joint, reordered, '--output', str(tmp_path / 'x.json')]))
    with pytest.raises(SystemExit, match='motion.*labels differ'):
        ensemble.main(ensemble.get_args([joint, relabelled, '--output', str(tmp_path / 'x.json')]))
    with pytest.raises(SystemExit, match='missing.*not a finished'):
        ensemble.main(ensemble.get_args([joint, str(tmp_path / 'missing'), '--output', str(tmp_path / 'x.json')]))
    with pytest.raises(SystemExit, match='2 weights for 1 runs'):
        ensemble.get_args([joint, '--weights', '1', '1'])


def test_command_line_imports_nothing_from_the_project(tmp_path):
    runs = [write_run(tmp_path / m, x, LABELS, NAMES) for m, x in [('joint', JOINT), ('bone', BONE), ('motion', MOTION)]]
    code = ('import runpy, sys; sys.argv = ["ensemble.py"] + sys.argv[1:]; '
            f'runpy.run_path({os.path.join(ROOT, "ensemble.py")!r}, run_name="__main__"); '
            'assert not {"common", "torch"} & set(sys.modules), sorted(sys.modules)')
    out = subprocess.run([sys.executable, '-c', code] + runs, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert 'top1 100.00' in out.stdout
    assert not (tmp_path / 'ensemble.json').exists()                                # not the current directory
    assert json.loads((tmp_path / 'joint' / 'ensemble.json').read_text())['fused']['top1'] == 100.0   # the first run's
