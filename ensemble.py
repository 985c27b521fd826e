"""Fuse the joint, bone and motion streams (paper Table 3, "3s-S2I"): weighted mean of softmax scores.

    python ensemble.py runs/finetune/ntu60_xsub_joint_full runs/finetune/ntu60_xsub_bone_full \\
        runs/finetune/ntu60_xsub_motion_full [--weights 1 1 1] [--output PATH]

Each run directory holds test_logits.npy (N, C) float32, test_labels.npy (N,) and test_names.txt
(written by probe.py / finetune.py). All runs must hold the same samples in the same order with
the same labels. Writes ensemble.json into the first run directory unless --output says
otherwise. Imports nothing from the project.
"""
import argparse
import json
import os
import sys

import numpy as np


def get_args(argv=None):
    parser = argparse.ArgumentParser(description='Fuse the softmax scores of several probe/finetune runs')
    parser.add_argument('runs', nargs='+', help='run directories (e.g. joint, bone, motion)')
    parser.add_argument('--weights', type=float, nargs='+', default=None, help='one per run; default: equal')
    parser.add_argument('--output', default=None,
                        help='where the accuracies are written as JSON (default: ensemble.json in the first run)')
    args = parser.parse_args(argv)
    if args.weights is None:
        args.weights = [1.0] * len(args.runs)
    if len(args.weights) != len(args.runs):
        sys.exit(f'--weights: {len(args.weights)} weights for {len(args.runs)} runs')
    return args


def load_run(run_dir):
    """(logits (N, C) float64, labels (N,), names) of one run directory; exits with one line on a bad run."""
    try:
        logits = np.load(os.path.join(run_dir, 'test_logits.npy')).astype(np.float64)
        labels = np.load(os.path.join(run_dir, 'test_labels.npy'))
        with open(os.path.join(run_dir, 'test_names.txt')) as f:
            names = f.read().splitlines()
    except OSError as error:
        sys.exit(f'{run_dir}: not a finished probe/finetune run ({error.strerror}: {os.path.basename(error.filename or "")})')
    except ValueError as error:
        sys.exit(f'{run_dir}: test_logits.npy or test_labels.npy is not a readable .npy file ({error})')
    if logits.ndim != 2 or len(logits) != len(labels) or len(names) != len(labels):
        sys.exit(f'{run_dir}: test_logits {logits.shape}, {len(labels)} labels and {len(names)} names do not agree')
    bad = int((~np.isfinite(logits)).sum())
    if bad:
        sys.exit(f'{run_dir}: test_logits.npy holds {bad} NaN or infinite values (a diverged run?); '
                 f'expected finite scores')
    return logits, labels, names


def softmax(logits):
    exp = np.exp(logits - logits.max(1, keepdims=True))
    return exp / exp.sum(1, keepdims=True)


def accuracies(scores, labels, ks=(1, 5)):
    """Top-k accuracy in percent for each k (k capped at the number of classes) and the mean of the
    per-class top-1 accuracies over the classes present (Toyota Smarthome's metric, Das et al. 2019)."""
    order = np.argsort(-scores, axis=1, kind='stable')
    result = {f'top{k}': float((order[:, :min(k, scores.shape[1])] == labels[:, None]).any(1).mean() * 100) for k in ks}
    right = order[:, 0] == labels
    result['mean_class_accuracy'] = float(np.mean([right[labels == c].mean() * 100 for c in np.unique(labels)]))
    return result


def fuse(runs, weights):
    """runs: list of (run_dir, logits, labels, names). Checks they agree; returns per-stream and fused accuracy."""
    first_dir, first_logits, labels, names = runs[0]
    for run_dir, logits, other_labels, other_names in runs[1:]:
        if other_names != names:
            sys.exit(f'{run_dir}: its test samples (test_names.txt) differ from {first_dir} in names or order')
        if not np.array_equal(other_labels, labels):
            sys.exit(f'{run_dir}: its test labels differ from {first_dir}')
        if logits.shape != first_logits.shape:
            sys.exit(f'{run_dir}: test_logits shape {logits.shape} differs from {first_dir} {first_logits.shape}')
    fused = sum(w * softmax(logits) for w, (_, logits, _, _) in zip(weights, runs)) / sum(weights)
    result = {'streams': {run_dir: accuracies(logits, labels) for run_dir, logits, _, _ in runs},
              'weights': list(weights), 'fused': accuracies(fused, labels), 'num_samples': len(labels),
              'num_classes': first_logits.shape[1]}
    return result


def main(args):
    runs = [(run_dir,) + load_run(run_dir) for run_dir in args.runs]
    result = fuse(runs, args.weights)
    for run_dir, acc in result['streams'].items():
        print(f'{run_dir}: top1 {acc["top1"]:.2f} top5 {acc["top5"]:.2f} mean class {acc["mean_class_accuracy"]:.2f}')
    fused = result['fused']
    print(f'fused ({" ".join(f"{w:g}" for w in args.weights)}): top1 {fused["top1"]:.2f} top5 {fused["top5"]:.2f} '
          f'mean class {fused["mean_class_accuracy"]:.2f}')
    output = args.output or os.path.join(args.runs[0], 'ensemble.json')
    with open(output + '.tmp', 'w') as f:
        json.dump(result, f, indent=2)
    os.replace(output + '.tmp', output)
    print(f'wrote {output}')
    return result


if __name__ == '__main__':
    main(get_args())
