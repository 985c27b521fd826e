"""How much a pretraining decoder needs the encoder: its loss on train images when it reads the encoder
tokens of the image it reconstructs, and when it reads another image's (the previous one in the batch;
every image has the same mask, so the tokens sit at the same positions). Where the two losses are equal
the encoder's information goes unused, and no gradient asks the encoder for more (issue 23: why DiffMAE
encoders fine-tune below random ones at small scale). DiffMAE is measured at each of --timesteps, MAE once.

    python tools/decoder_reliance.py runs/pretrain/ucla_xview_joint_diffmae/checkpoint.pth --data-root data/cpu64

Prints one JSON line: per timestep (null for MAE) the two losses and the encoder's share of the error,
1 - own / other. The data, model and schedule are the checkpoint's own; --samples train images spread
over the split, normalised as pretraining does (no augmentation), masked with --seed.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the stages, beside tools/
import common  # noqa: E402
import encoder_stats  # noqa: E402
import pretrain  # noqa: E402


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoint', help="a pretraining run's checkpoint.pth (it holds the decoder)")
    parser.add_argument('--data-root', default='data', help="the encoded data (default: data); the dataset is the run's")
    parser.add_argument('--samples', type=int, default=128, help='train images, spread over the split')
    parser.add_argument('--timesteps', default='0,100,200,300,400,500,600,700,800,900,999',
                        help='DiffMAE: comma-separated timesteps t to measure at')
    parser.add_argument('--seed', type=int, default=0, help='masks and noise')
    args = parser.parse_args(argv)
    if args.samples < 2:
        parser.error('--samples: at least 2 (an image needs another to borrow encoder tokens from)')
    return args


@torch.no_grad()
def reliance(model, images, ids_keep, ids_masked, timesteps, seed):
    """[(t, loss with the image's own encoder tokens, loss with the previous image's, share)], one row
    per timestep for DiffMAE and one (t None) for MAE; every row of ids_keep must be the same."""
    torch.manual_seed(seed)
    x0 = model.target(images, ids_masked) if isinstance(model, pretrain.MAE) else \
        pretrain.gather_tokens(pretrain.patchify(images, model.patch), ids_masked)      # (N, Lm, p*p*3)
    own = model.context(images, ids_keep)
    if isinstance(model, pretrain.MAE):
        losses = [float(((model.decode(context, ids_keep, ids_masked) - x0) ** 2).mean())
                  for context in (own, own.roll(1, dims=0))]                           # image i reads image i-1's
        return [(None, *losses, 1 - losses[0] / losses[1])]
    other = [context.roll(1, dims=0) for context in own]
    rows = []
    for t in timesteps:
        t_batch = torch.full((len(images),), t, dtype=torch.long)
        alpha_bar = model.alphas_bar[t]
        noisy = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * torch.randn_like(x0)
        losses = [float(((model.denoise(context, noisy, t_batch, ids_masked) - x0) ** 2).mean())
                  for context in (own, other)]
        rows.append((t, *losses, 1 - losses[0] / losses[1]))
    return rows


def main(args):
    state = common.read_torch_file(args.checkpoint, 'checkpoint')
    saved = state.get('args', {})
    if state.get('stage') != 'pretrain':
        sys.exit(f"decoder_reliance.py: {args.checkpoint}: expected a pretraining checkpoint.pth "
                 f"(this one is of stage {state.get('stage')})")
    run = pretrain.get_args(['--data', saved['data'], '--model', saved['model']])    # defaults of newer flags
    vars(run).update(saved)
    data, protocol = run.data.split(',')[0], run.protocol.split(',')[0]
    meta, images = encoder_stats.train_images(args.data_root, data, protocol, run.modality, args.samples)
    model = pretrain.build_model(run, meta['size'])
    trained = state['model']['encoder.pos_embed'].shape
    if trained != model.encoder.pos_embed.shape:
        sys.exit(f'decoder_reliance.py: {args.checkpoint} was pretrained on {trained[1] - 1} patches per image, '
                 f'but {args.data_root}/{data}/{protocol} is encoded at {meta["size"]} x {meta["size"]}: '
                 'give the --data-root it used')
    model.load_state_dict(state['model'])
    model.eval()
    torch.manual_seed(args.seed)
    mask = pretrain.make_masks(run.mask, 1, model.grid, run.mask_ratio, slice(None), torch.device('cpu'))
    mask = mask.expand(len(images), -1)                                  # one mask for all: positions line up
    ids_keep, ids_masked = pretrain.split_ids(mask, pretrain.num_masked(run.mask, model.grid, run.mask_ratio))
    timesteps = [int(t) for t in args.timesteps.split(',')]
    if run.method == 'diffmae' and not all(0 <= t < run.timesteps for t in timesteps):
        sys.exit(f'--timesteps {args.timesteps}: expected timesteps in [0, {run.timesteps})')
    measured = reliance(model, images, ids_keep, ids_masked, timesteps, args.seed)
    result = {'checkpoint': args.checkpoint, 'method': run.method, 'epoch': state['epoch'], 'samples': len(images),
              'rows': [{'t': t, 'own': own, 'other': other, 'encoder_share': share} for t, own, other, share in measured]}
    print(json.dumps(result))
    return result


if __name__ == '__main__':
    main(get_args())
