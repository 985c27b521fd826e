"""The signature of an encoder on training images: how many directions its features use, and how
large its residual stream grows, block by block (issue 23: why DiffMAE encoders fine-tune below
random ones at small scale).

    python tools/encoder_stats.py runs/pretrain/ucla_xview_joint_diffmae/encoder.pth --data ucla --data-root data/cpu64 \\
        --model vit_tiny_patch16
    python tools/encoder_stats.py none --data ucla --data-root data/cpu64 --model vit_tiny_patch16   # a random encoder

Prints one JSON line: the effective rank (Roy and Vetterli 2007: exp of the entropy of the normalised
singular values of the centred features) of the class token and of the mean patch token after the
final norm, and the mean L2 norm of the residual stream's tokens after each block, over --samples
train images spread over the split, normalised as the training stages do (no augmentation).
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # common.py, beside tools/
import common  # noqa: E402


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('init', help="encoder.pth (or any --init the stages take), or 'none' for a random encoder")
    parser.add_argument('--data', required=True)
    parser.add_argument('--data-root', default='data')
    parser.add_argument('--protocol', default=None)
    parser.add_argument('--modality', default='joint', choices=['joint', 'bone', 'motion'])
    parser.add_argument('--model', default='vit_base_patch16', choices=list(common.MODELS))
    parser.add_argument('--samples', type=int, default=128, help='train images, spread over the split')
    parser.add_argument('--seed', type=int, default=0, help="the random encoder's initialisation ('none')")
    args = parser.parse_args(argv)
    if args.samples < 2:
        parser.error('--samples: at least 2 (a rank needs centred features)')
    return args


def effective_rank(features):
    """exp(entropy) of the singular values of the centred (N, D) features, normalised to sum 1; 0 when
    every sample has the same features."""
    centred = features.double() - features.double().mean(0)
    singular = torch.linalg.svdvals(centred)
    if singular.sum() == 0:
        return 0.0
    p = singular / singular.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def signature(encoder, images):
    """Effective ranks of the class token and of the mean patch token after the final norm, and the mean
    token norm of the residual stream after each block, of images (N, 3, S, S)."""
    final, blocks = encoder.forward_intermediates(images, return_prefix_tokens=True, output_fmt='NLC')
    norms = [float(torch.cat([prefix, patches], 1).norm(dim=-1).mean()) for patches, prefix in blocks]
    return {'rank_cls': effective_rank(final[:, 0]), 'rank_mean_patch': effective_rank(final[:, 1:].mean(1)),
            'residual_norm_per_block': norms}


def train_images(data_root, data, protocol, modality, samples):
    """meta.json and `samples` train images (N, 3, S, S) spread evenly over the split, normalised as the
    training stages do (no augmentation)."""
    meta = common.load_meta(data_root, data, protocol)
    path, labels, _ = common.read_split(data_root, data, protocol, 'train', modality)
    shown = np.linspace(0, len(labels) - 1, min(samples, len(labels))).round().astype(np.int64)
    images = common.S2IDataset([path], [labels]).__getitems__(shown.tolist())[0].float()     # (N, 3, S, S)
    mean, std = common.channel_stats(meta, modality, torch.device('cpu'))
    return meta, (images - mean) / std


def main(args):
    args.protocol = common.resolve_protocol(args.data_root, args.data, args.protocol)
    meta, images = train_images(args.data_root, args.data, args.protocol, args.modality, args.samples)
    torch.manual_seed(args.seed)
    encoder = common.build_encoder(args.model, img_size=meta['size'])
    common.load_encoder_weights(encoder, args.init, args.model, log=lambda *a: None)
    result = {'init': args.init, 'data': f'{args.data}/{args.protocol}/{args.modality}', 'samples': len(images),
              **signature(encoder.eval(), images)}
    print(json.dumps(result))
    return result


if __name__ == '__main__':
    main(get_args())
