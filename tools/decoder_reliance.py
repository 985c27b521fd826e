"""How much a DiffMAE decoder needs the encoder, timestep by timestep: its x0 loss on train images when
it reads the encoder tokens of the image it denoises, and when it reads another image's (the next one
in the batch, with that image's visible positions). Where the two losses are equal the encoder's
information goes unused, and no gradient asks the encoder for more (issue 23: why DiffMAE encoders
fine-tune below random ones at small scale).

    python tools/decoder_reliance.py runs/pretrain/ucla_xview_joint_diffmae/checkpoint.pth --data-root data/cpu64

Prints one JSON line: for each timestep, the two losses and the encoder's share of the error,
1 - own / other. The data, model and schedule are the checkpoint's own; --samples train images spread
over the split, normalised as pretraining does (no augmentation), masked with --seed.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the stages, beside tools/
import common  # noqa: E402
import pretrain  # noqa: E402


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoint', help="a DiffMAE pretraining run's checkpoint.pth (it holds the decoder)")
    parser.add_argument('--data-root', default='data', help="the encoded data (default: data); the dataset is the run's")
    parser.add_argument('--samples', type=int, default=128, help='train images, spread over the split')
    parser.add_argument('--timesteps', default='0,100,200,300,400,500,600,700,800,900,999',
                        help='comma-separated timesteps t to measure at')
    parser.add_argument('--seed', type=int, default=0, help='masks and noise')
    args = parser.parse_args(argv)
    if args.samples < 2:
        parser.error('--samples: at least 2 (an image needs another to borrow encoder tokens from)')
    return args


@torch.no_grad()
def reliance(model, images, ids_keep, ids_masked, timesteps, seed):
    """{t: (loss with the image's own encoder tokens, loss with the next image's, share)} at each t."""
    torch.manual_seed(seed)
    x0 = pretrain.gather_tokens(pretrain.patchify(images, model.patch), ids_masked)     # (N, Lm, p*p*3)
    own = model.context(images, ids_keep)
    other = [context.roll(1, dims=0) for context in own]                                # image i reads image i-1's
    result = {}
    for t in timesteps:
        t_batch = torch.full((len(images),), t, dtype=torch.long)
        alpha_bar = model.alphas_bar[t]
        noisy = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * torch.randn_like(x0)
        losses = [float(((model.denoise(context, noisy, t_batch, ids_masked) - x0) ** 2).mean())
                  for context in (own, other)]
        result[t] = (*losses, 1 - losses[0] / losses[1])
    return result


def main(args):
    state = common.read_torch_file(args.checkpoint, 'checkpoint')
    saved = state.get('args', {})
    if state.get('stage') != 'pretrain' or saved.get('method') != 'diffmae':
        sys.exit(f"decoder_reliance.py: {args.checkpoint}: expected a DiffMAE pretraining checkpoint.pth "
                 f"(stage {state.get('stage')}, method {saved.get('method')})")
    run = pretrain.get_args(['--data', saved['data'], '--model', saved['model']])    # defaults of newer flags
    vars(run).update(saved)
    data, protocol = run.data.split(',')[0], run.protocol.split(',')[0]
    meta = common.load_meta(args.data_root, data, protocol)
    path, labels, _ = common.read_split(args.data_root, data, protocol, 'train', run.modality)
    shown = np.linspace(0, len(labels) - 1, min(args.samples, len(labels))).round().astype(np.int64)
    images = common.S2IDataset([path], [labels]).__getitems__(shown.tolist())[0].float()     # (N, 3, S, S)
    mean, std = common.channel_stats(meta, run.modality, torch.device('cpu'))
    model = pretrain.build_model(run, meta['size'])
    model.load_state_dict(state['model'])
    model.eval()
    torch.manual_seed(args.seed)
    mask = pretrain.make_masks(run.mask, len(images), model.grid, run.mask_ratio, slice(None), torch.device('cpu'))
    ids_keep, ids_masked = pretrain.split_ids(mask, pretrain.num_masked(run.mask, model.grid, run.mask_ratio))
    timesteps = [int(t) for t in args.timesteps.split(',')]
    if not all(0 <= t < len(model.alphas_bar) for t in timesteps):
        sys.exit(f'--timesteps {args.timesteps}: expected timesteps in [0, {len(model.alphas_bar)})')
    measured = reliance(model, (images - mean) / std, ids_keep, ids_masked, timesteps, args.seed)
    result = {'checkpoint': args.checkpoint, 'epoch': state['epoch'], 'samples': len(shown),
              'timesteps': {t: {'own': own, 'other': other, 'encoder_share': share}
                            for t, (own, other, share) in measured.items()}}
    print(json.dumps(result))
    return result


if __name__ == '__main__':
    main(get_args())
