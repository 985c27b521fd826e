"""Masked pretraining (MAE or DiffMAE) of an ImageNet ViT on S2I skeleton images (Sections 3.3-3.4).

    python pretrain.py --data ntu60 --method diffmae                       # one GPU or the CPU
    torchrun --nproc_per_node 8 pretrain.py --data ntu60 --method mae      # DDP, same global batch

Reads the encoded dataset written by encode.py, writes to runs/pretrain/{data}_{protocol}_{modality}_{method}/:
checkpoint.pth (full state for --resume), encoder.pth (the ViT alone, timm key names, for probe.py and
finetune.py), log.jsonl (one line per epoch) and, with --vis K, PNGs of input / masked / reconstruction.

Every random draw of a micro-step (augmentation, mask, timestep, noise) is made for the whole global
micro-batch from a seed that depends only on --seed and the micro-step index, and each rank keeps its
rows (rank r holds rows r::world, as DistributedSampler deals them). So 1 and N processes see the same
randomness, and a resumed run repeats the uninterrupted one exactly.
"""
import argparse
import contextlib
import math
import os
import random
import sys
import time
from functools import partial

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat
from timm.layers import Mlp
from timm.models.vision_transformer import Attention, Block

import common
import pictures


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # --data, --data-root, --protocol, --modality, --batch-size, --epochs, --num-workers
    common.add_data_args(parser, batch_size=512, epochs=None)   # Tables 10, 11: batch 512 (768 universal, A.5)

    group = parser.add_argument_group('method')
    group.add_argument('--method', default='diffmae', choices=['mae', 'diffmae'],
                       help='DiffMAE is the paper\'s default backbone (4.3, Table 1)')
    group.add_argument('--mask', default='random', choices=['random', 'block', 'joint', 'temporal'],
                       help='masking strategy (3.3, Table 2); random is the default')
    group.add_argument('--mask-ratio', type=float, default=0.75, help='fraction of patches masked (Fig. 3)')
    group.add_argument('--decoder-depth', type=int, default=8, help='decoder blocks (4.2, A.1)')
    group.add_argument('--decoder-dim', type=int, default=512, help='decoder width (4.2, A.1)')
    group.add_argument('--decoder-heads', type=int, default=16, help='decoder attention heads (MAE)')
    group.add_argument('--norm-pix-loss', action='store_true',
                       help='MAE only: per-patch normalised target (MAE\'s option; eq. 1 is plain MSE)')
    group.add_argument('--init-decoder', action='store_true',
                       help="MAE only: start the decoder from --init's too, an official MAE checkpoint that has one "
                            "(mae_pretrain_vit_base_full.pth: 8 x 512, 16 heads, trained on normalised pixels); "
                            'default: a new decoder')

    group = parser.add_argument_group('diffusion (DiffMAE, A.1, A.2)')
    group.add_argument('--decoder', default='cross', choices=['cross', 'cross-self'],
                       help="'cross': noise tokens attend only to the encoder output (A.1); "
                            "'cross-self': cross-attention, then self-attention among noise tokens (4.2)")
    group.add_argument('--cross-features', default='top-down', choices=['top-down', 'last'],
                       help="encoder features each decoder block attends to: 'top-down': decoder block j to "
                            "encoder block depth-1-j (DiffMAE, Wei et al. 2023, Fig. 3); 'last': all to the last")
    group.add_argument('--timesteps', type=int, default=1000, help='T (A.1)')
    group.add_argument('--beta-start', type=float, default=1e-4, help='linear schedule (A.2)')
    group.add_argument('--beta-end', type=float, default=0.02, help='linear schedule (A.2)')
    group.add_argument('--rho', type=float, default=1.0, help='each beta_t becomes beta_t ** rho (A.2)')
    group.add_argument('--min-timestep', type=int, default=0,
                       help='draw t uniformly from [this, T) instead of [0, T): e.g. T/2 keeps only the noisier '
                            'half, where the noisy patch alone says little and the decoder must read the encoder')
    group.add_argument('--loss-weight', default='none', choices=['none', 'min-snr'],
                       help="'min-snr': each sample's x0 loss weighted by min(SNR_t, 5) (Hang et al. 2023), "
                            'which shrinks the nearly clean timesteps; default: eq. 2 unweighted')
    group.add_argument('--tap-norm', default='shared', choices=['shared', 'own'],
                       help="how the decoder reads the encoder blocks it taps below the last: 'shared': through "
                            "the encoder's final LayerNorm (A.1's, the one fine-tuning reads); 'own': through a "
                            'LayerNorm of the decoder per tapped block (none with --cross-features last)')

    group = parser.add_argument_group('optimisation (Tables 10, 11)')
    group.add_argument('--blr', type=float, default=1.5e-4, help='base lr: lr = blr * global batch / 256 (Table 10)')
    group.add_argument('--lr', type=float, default=None, help='absolute lr (overrides --blr)')
    group.add_argument('--min-lr', type=float, default=0.0, help='end of the cosine (MAE)')
    group.add_argument('--weight-decay', type=float, default=0.05, help='Table 10')
    group.add_argument('--warmup-epochs', type=int, default=40, help='Table 10')
    group.add_argument('--accum-iter', type=int, default=1,
                       help='gradient accumulation: per-rank micro-batch = batch_size / (world * accum_iter)')

    common.add_augment_args(parser)                              # A.2: flip, rotation, affine, noise
    # --model, --init, --output-dir, --resume, --seed, --device, --compile, --precision, --save-every, --stop-after
    common.add_run_args(parser, 'pretrain')
    group = parser.add_argument_group('logging')
    group.add_argument('--print-every', type=int, default=20, help='optimizer steps between printed losses')
    group.add_argument('--vis', type=int, default=0, metavar='K',
                       help='save a PNG of input / masked / reconstruction for K train samples at each checkpoint')
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = 1600 if args.method == 'diffmae' else 800   # Table 11 / Table 10
    if args.norm_pix_loss and args.method != 'mae':
        parser.error('--norm-pix-loss applies to --method mae only')
    diffmae_only = [('--min-timestep', args.min_timestep, 0), ('--loss-weight', args.loss_weight, 'none'),
                    ('--tap-norm', args.tap_norm, 'shared')]
    changed = [flag for flag, value, default in diffmae_only if value != default]
    if changed and args.method != 'diffmae':
        parser.error(f'{changed[0]} applies to --method diffmae only')
    if args.init_decoder and (args.method != 'mae' or args.init in ('imagenet', 'none')):
        parser.error('--init-decoder: needs --method mae and --init PATH of an MAE checkpoint with its decoder '
                     "(timm's ImageNet weights hold the encoder only)")
    common.check_args(args)
    if not 0 <= args.min_timestep < args.timesteps:
        sys.exit(f'--min-timestep {args.min_timestep}: expected 0 <= it < --timesteps ({args.timesteps})')
    if not 0 < args.mask_ratio < 1:
        sys.exit(f'--mask-ratio {args.mask_ratio}: expected a fraction strictly between 0 and 1 (the paper: 0.75)')
    return args


# ----------------------------------------------------------------------------------------------
# Patches and masks. Patch index = row * grid + col; rows are time, columns are joints.

def patchify(images, patch):
    """(N, 3, H, W) -> (N, L, patch*patch*3), MAE's pixel order (p, q, c)."""
    return rearrange(images, 'n c (h p) (w q) -> n (h w) (p q c)', p=patch, q=patch)


def unpatchify(patches, patch, channels=3):
    """(N, L, patch*patch*3) -> (N, 3, H, W)."""
    grid = math.isqrt(patches.shape[1])
    return rearrange(patches, 'n (h w) (p q c) -> n c (h p) (w q)', h=grid, p=patch, q=patch, c=channels)


def num_masked(kind, grid, ratio):
    """Masked patches per sample: floor(r * L) for random/block, whole columns/rows for joint/temporal.

    At least one patch (one row/column) stays visible and at least one is masked.
    """
    if kind in ('joint', 'temporal'):
        lines = min(max(int(ratio * grid + 0.5), 1), grid - 1)    # round half up, not Python's half-even
        return lines * grid
    return min(max(int(math.floor(ratio * grid * grid)), 1), grid * grid - 1)


def block_mask(grid, count, rng, min_area=4, aspect=0.3, attempts=10):
    """(grid*grid,) bool with exactly `count` masked patches in contiguous blocks.

    BEiT-style: rectangles of random area and aspect ratio at random places are added while they
    fit in the remaining count (never overshooting); the rest is topped up deterministically by
    growing the masked region into its 4-neighbours in row-major order, so that no masked patch is
    isolated.
    """
    mask = np.zeros((grid, grid), dtype=bool)
    masked = 0
    while count - masked >= min_area:
        for _ in range(attempts):
            remaining = count - masked
            area = rng.uniform(min_area, remaining)
            ratio = math.exp(rng.uniform(math.log(aspect), -math.log(aspect)))  # aspect h/w in [0.3, 1/0.3]
            h, w = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
            if not (1 <= h <= grid and 1 <= w <= grid):
                continue
            top, left = rng.randrange(grid - h + 1), rng.randrange(grid - w + 1)
            added = int((~mask[top:top + h, left:left + w]).sum())
            if 0 < added <= remaining:
                mask[top:top + h, left:left + w] = True
                masked += added
                break
        else:
            break
    while masked < count:
        if masked == 0:
            mask.flat[rng.randrange(grid * grid)] = True
            masked = 1
            continue
        grown = np.zeros_like(mask)
        grown[1:] |= mask[:-1]
        grown[:-1] |= mask[1:]
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        frontier = np.flatnonzero(grown & ~mask)[:count - masked]
        mask.flat[frontier] = True
        masked += len(frontier)
    return mask.reshape(-1)


def make_masks(kind, n, grid, ratio, rows, device):
    """Masks (len(rows), L) bool, the same count in every row, drawn for n samples from the global
    RNG (seeded by the caller) and restricted to `rows` of them.
    """
    length = grid * grid
    count = num_masked(kind, grid, ratio)
    if kind == 'random':                                              # MAE: per-sample shuffle
        order = torch.rand(n, length, device=device).argsort(dim=1)[rows]   # (n_rows, L)
        return torch.zeros_like(order, dtype=torch.bool).scatter_(1, order[:, :count], True)
    if kind in ('joint', 'temporal'):                                 # whole columns / whole rows
        lines = count // grid
        chosen = torch.rand(n, grid, device=device).argsort(dim=1)[rows][:, :lines]   # (n_rows, lines)
        line_mask = torch.zeros(len(chosen), grid, dtype=torch.bool, device=device)
        line_mask.scatter_(1, chosen, True)                           # (n_rows, grid)
        if kind == 'joint':                                           # mask[row, col] = line_mask[col]
            return repeat(line_mask, 'n col -> n (row col)', row=grid)
        return repeat(line_mask, 'n row -> n (row col)', col=grid)
    seeds = torch.randint(0, 2 ** 62, (n,))[rows].tolist()          # block: one stream per sample
    masks = [block_mask(grid, count, random.Random(seed)) for seed in seeds]
    return torch.from_numpy(np.stack(masks)).to(device)


def split_ids(mask, count):
    """Bool masks (N, L), `count` masked in each row -> indices of the visible (N, L - count) and the
    masked (N, count) patches, each in increasing patch order."""
    ids = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)     # (N, L): visible first
    return ids[:, :mask.shape[1] - count], ids[:, mask.shape[1] - count:]


# ----------------------------------------------------------------------------------------------
# Diffusion schedule (DDPM, A.2)

def diffusion_schedule(timesteps, beta_start, beta_end, rho):
    """betas (T,) and alpha-bars (T,) in float64: linear betas, each raised to rho (DiffMAE's knob)."""
    betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64) ** rho
    return betas, torch.cumprod(1 - betas, dim=0)


def min_snr_weight(alpha_bar, gamma=5.0):
    """Min-SNR-gamma loss weight of an x0-predicting model (Hang et al. 2023): min(SNR_t, gamma), with
    SNR_t = alpha_bar_t / (1 - alpha_bar_t)."""
    return (alpha_bar / (1 - alpha_bar)).clamp(max=gamma)


def timestep_embedding(t, dim, max_period=10000):
    """Sinusoidal embedding of integer timesteps (N,) -> (N, dim), as in DDPM / ADM."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    embedding = torch.cat([angles.cos(), angles.sin()], dim=1)
    return F.pad(embedding, (0, dim % 2))


# ----------------------------------------------------------------------------------------------
# Models. The encoder is common.build_encoder's timm ViT, kept as `self.encoder` so its keys are
# timm's; every other parameter's name starts with 'decoder' or 'mask_token' (dropped by
# common.encoder_state_dict when the checkpoint is used as --init).

def encode_visible(encoder, images, ids_keep, blocks=(-1,), norms=None):
    """ViT on the visible patches only, with MAE's class (dummy) token: (N, 3, H, W) -> the outputs of
    the encoder `blocks` asked for, each (N, 1 + Lv, D) after the encoder's LayerNorm (DiffMAE's
    "LayerNorm appended to the encoder output", A.1) or the one `norms` gives that block, in a dict by
    block index (-1: the last).
    """
    norms = norms or {}
    x = encoder.patch_embed(images) + encoder.pos_embed[:, 1:]                 # (N, L, D)
    x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))     # (N, Lv, D)
    cls = (encoder.cls_token + encoder.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    x = encoder.norm_pre(torch.cat([cls, x], dim=1))                           # (N, 1 + Lv, D)
    depth, outputs = len(encoder.blocks), {}
    for index, block in enumerate(encoder.blocks):
        x = block(x)
        for wanted in blocks:
            if wanted % depth == index:
                outputs[wanted] = norms.get(wanted, encoder.norm)(x)
    return outputs


def gather_tokens(x, ids):
    """Rows of x (N, L, C) at ids (N, K) -> (N, K, C)."""
    return torch.gather(x, 1, ids[..., None].expand(-1, -1, x.shape[-1]))


def fixed_pos_embed(dim, grid):
    """(1, 1 + L, dim) sin-cos, not trained (A.1)."""
    return nn.Parameter(common.sincos_pos_embed(dim, grid, cls_token=True), requires_grad=False)


def init_weights(module):
    """MAE's initialisation for the new (decoder) layers: xavier linear, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class MAE(nn.Module):
    """He et al. 2022: encoder on visible patches, light decoder with mask tokens, MSE on masked patches (eq. 1)."""

    def __init__(self, encoder, grid, decoder_dim=512, decoder_depth=8, decoder_heads=16, norm_pix_loss=False):
        super().__init__()
        self.encoder, self.grid, self.norm_pix_loss = encoder, grid, norm_pix_loss
        self.patch = encoder.patch_embed.patch_size[0]
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = fixed_pos_embed(decoder_dim, grid)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads, mlp_ratio=4, qkv_bias=True, norm_layer=LayerNorm)
            for _ in range(decoder_depth))
        self.decoder_norm = LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch ** 2 * 3)
        for name, module in self.named_children():
            if name.startswith('decoder'):
                module.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def context(self, images, ids_keep):
        """The encoded visible patches at the decoder width (N, 1 + Lv, Dd)."""
        return self.decoder_embed(encode_visible(self.encoder, images, ids_keep)[-1])

    def predict(self, images, ids_keep, ids_masked):
        """Predicted patches (N, Lm, p*p*3) of the masked positions."""
        return self.decode(self.context(images, ids_keep), ids_keep, ids_masked)

    def decode(self, latent, ids_keep, ids_masked):
        """The decoder on the encoder tokens `latent` (N, 1 + Lv, Dd) -> the masked patches (N, Lm, p*p*3)."""
        n, length = latent.shape[0], self.grid ** 2
        tokens = self.mask_token.to(latent.dtype).expand(n, length, -1)             # (N, L, Dd); bf16 under autocast
        tokens = torch.scatter(tokens, 1, ids_keep[..., None].expand(-1, -1, latent.shape[-1]), latent[:, 1:])
        x = torch.cat([latent[:, :1], tokens], dim=1) + self.decoder_pos_embed       # (N, 1 + L, Dd)
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_pred(self.decoder_norm(x))[:, 1:]                           # (N, L, p*p*3)
        return gather_tokens(x, ids_masked)

    def target(self, images, ids_masked):
        target = gather_tokens(patchify(images, self.patch), ids_masked)             # (N, Lm, p*p*3)
        if self.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        return target

    def forward(self, images, ids_keep, ids_masked, t=None, noise=None):
        """Loss (eq. 1): mean squared error over the masked patches (the same count in every sample)."""
        pred = self.predict(images, ids_keep, ids_masked).float()
        return F.mse_loss(pred, self.target(images, ids_masked))

    @torch.no_grad()
    def reconstruct(self, images, ids_keep, ids_masked):
        pred = self.predict(images, ids_keep, ids_masked).float()
        if self.norm_pix_loss:   # show it in pixel space with the true patch statistics, as MAE's demo does
            target = gather_tokens(patchify(images, self.patch), ids_masked)
            pred = pred * (target.var(-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(-1, keepdim=True)
        return pred


class CrossAttention(nn.Module):
    """Queries from the noise tokens, keys and values from the encoder tokens (scaled-dot-product)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, context):
        q = rearrange(self.q(x), 'n l (h d) -> n h l d', h=self.heads)                         # (N, h, Lq, d)
        k, v = rearrange(self.kv(context), 'n l (two h d) -> two n h l d', two=2, h=self.heads)  # (N, h, Lc, d) each
        x = F.scaled_dot_product_attention(q, k, v)                                        # (N, h, Lq, d)
        return self.proj(rearrange(x, 'n h l d -> n l (h d)'))


def cross_sources(encoder_depth, decoder_depth, cross_features):
    """Encoder block each decoder block cross-attends to. DiffMAE (Wei et al. 2023, Fig. 3) connects
    the decoder blocks top-down to the encoder blocks: decoder block j reads encoder block depth-1-j
    (the first decoder block the last encoder block; a decoder deeper than the encoder keeps reading
    block 0). 'last' gives every decoder block the last encoder block's output."""
    if cross_features == 'last':
        return [encoder_depth - 1] * decoder_depth
    return [max(encoder_depth - 1 - j, 0) for j in range(decoder_depth)]


class DecoderBlock(nn.Module):
    """DiffMAE decoder block: cross-attention to the encoder tokens, optional self-attention among
    the noise tokens ('cross-self', 4.2), MLP. Without self-attention each noise token is decoded
    independently of the others ('cross', A.1)."""

    def __init__(self, dim, heads, self_attention):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, heads)
        self.norm_self = LayerNorm(dim) if self_attention else None
        self.self_attn = Attention(dim, heads, qkv_bias=True) if self_attention else None
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x, context):
        x = x + self.cross_attn(self.norm1(x), context)
        if self.self_attn is not None:
            x = x + self.self_attn(self.norm_self(x))
        return x + self.mlp(self.norm2(x))


class DiffMAE(nn.Module):
    """Wei et al. 2023: the masked patches are noised (DDPM forward process) and a decoder conditioned
    on the encoded visible patches predicts their clean pixels x0 (eq. 2)."""

    def __init__(self, encoder, grid, decoder_dim=512, decoder_depth=8, decoder_heads=16, decoder='cross',
                 timesteps=1000, beta_start=1e-4, beta_end=0.02, rho=1.0, cross_features='top-down',
                 tap_norm='shared', loss_weight='none'):
        super().__init__()
        self.encoder, self.grid, self.loss_weight = encoder, grid, loss_weight
        self.sources = cross_sources(len(encoder.blocks), decoder_depth, cross_features)
        below_last = sorted(set(self.sources) - {len(encoder.blocks) - 1})
        self.decoder_tap_norms = nn.ModuleDict(
            {str(index): LayerNorm(encoder.embed_dim) for index in below_last} if tap_norm == 'own' else {})
        self.patch = encoder.patch_embed.patch_size[0]
        pixels = self.patch ** 2 * 3
        _, alphas_bar = diffusion_schedule(timesteps, beta_start, beta_end, rho)
        self.register_buffer('alphas_bar', alphas_bar.float(), persistent=False)
        self.decoder_clean_embed = nn.Linear(encoder.embed_dim, decoder_dim)    # encoder tokens (A.1)
        self.decoder_noise_embed = nn.Linear(pixels, decoder_dim)               # noisy pixels (A.1)
        self.decoder_time_embed = nn.Sequential(nn.Linear(decoder_dim, decoder_dim), nn.SiLU(),
                                                nn.Linear(decoder_dim, decoder_dim))
        self.decoder_pos_embed = fixed_pos_embed(decoder_dim, grid)
        self.decoder_blocks = nn.ModuleList(
            DecoderBlock(decoder_dim, decoder_heads, self_attention=decoder == 'cross-self')
            for _ in range(decoder_depth))
        self.decoder_norm = LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, pixels)
        for name, module in self.named_children():
            if name.startswith('decoder'):
                module.apply(init_weights)

    def context(self, images, ids_keep):
        """For each decoder block, its encoder block's tokens projected to the decoder width (one
        projection for all, A.1), with decoder positions: a list of (N, 1 + Lv, Dd)."""
        norms = {int(index): norm for index, norm in self.decoder_tap_norms.items()}
        features = encode_visible(self.encoder, images, ids_keep, blocks=sorted(set(self.sources)), norms=norms)
        pos = gather_tokens(self.decoder_pos_embed.expand(images.shape[0], -1, -1),
                            F.pad(ids_keep + 1, (1, 0)))                          # class token at 0
        projected = {index: self.decoder_clean_embed(x) + pos for index, x in features.items()}
        return [projected[index] for index in self.sources]

    def denoise(self, context, noisy, t, ids_masked):
        """x0 predicted from the noisy masked patches (N, Lm, p*p*3) at timesteps t (N,)."""
        x = self.decoder_noise_embed(noisy)                                        # (N, Lm, Dd)
        x = x + gather_tokens(self.decoder_pos_embed[:, 1:].expand(x.shape[0], -1, -1), ids_masked)
        x = x + self.decoder_time_embed(timestep_embedding(t, x.shape[-1]))[:, None]
        for block, block_context in zip(self.decoder_blocks, context):
            x = block(x, block_context)
        return self.decoder_pred(self.decoder_norm(x))                              # (N, Lm, p*p*3)

    def forward(self, images, ids_keep, ids_masked, t, noise):
        """Loss (eq. 2): MSE between the masked patches x0 and the decoder's x0 from x_t."""
        x0 = gather_tokens(patchify(images, self.patch), ids_masked)               # (N, Lm, p*p*3)
        alpha_bar = self.alphas_bar[t][:, None, None]
        noisy = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise             # x_t
        pred = self.denoise(self.context(images, ids_keep), noisy, t, ids_masked)
        if self.loss_weight == 'none':
            return F.mse_loss(pred.float(), x0)
        return (min_snr_weight(self.alphas_bar[t]) * (pred.float() - x0).pow(2).mean(dim=(1, 2))).mean()

    @torch.no_grad()
    def reconstruct(self, images, ids_keep, ids_masked, steps=50):
        """Deterministic DDIM sampling from pure noise with the x0-predicting decoder."""
        context = self.context(images, ids_keep)
        x = torch.randn(ids_masked.shape + (self.patch ** 2 * 3,), device=images.device)
        times = torch.linspace(len(self.alphas_bar) - 1, 0, steps).round().long().tolist()
        for i, t in enumerate(times):
            t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            x0 = self.denoise(context, x, t_batch, ids_masked).float()
            if i + 1 == len(times):
                return x0
            a, a_next = self.alphas_bar[t], self.alphas_bar[times[i + 1]]
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
        return x


def build_model(args, size):
    """The timm encoder (pos_embed fixed) inside MAE or DiffMAE."""
    encoder = common.build_encoder(args.model, size)
    encoder.pos_embed.requires_grad_(False)
    grid = size // common.PATCH_SIZE
    if args.method == 'mae':
        return MAE(encoder, grid, args.decoder_dim, args.decoder_depth, args.decoder_heads, args.norm_pix_loss)
    return DiffMAE(encoder, grid, args.decoder_dim, args.decoder_depth, args.decoder_heads, args.decoder,
                   args.timesteps, args.beta_start, args.beta_end, args.rho, args.cross_features,
                   args.tap_norm, args.loss_weight)


def init_encoder(encoder, init, model, log=print):
    """--init weights, then the position embedding back to our grid's fixed sin-cos (A.1)."""
    common.load_encoder_weights(encoder, init, model, log=log)
    grid = math.isqrt(encoder.pos_embed.shape[1] - 1)
    with torch.no_grad():
        encoder.pos_embed.copy_(common.sincos_pos_embed(encoder.embed_dim, grid, cls_token=True))


def init_decoder(model, path, log=print):
    """--init-decoder: MAE's decoder from an official full checkpoint (models_mae.py key names, which
    ours share); decoder_pos_embed stays this grid's fixed sin-cos, as the encoder's (A.1)."""
    state = common.read_torch_file(path, '--init')
    state = {k.removeprefix('module.'): v for k, v in state.get('model', state).items()}
    wanted = {k: v for k, v in model.state_dict().items()
              if k.startswith(('decoder', 'mask_token')) and k != 'decoder_pos_embed'}
    missing = [k for k in wanted if k not in state]
    if missing:
        sys.exit(f"--init-decoder: {path} holds no MAE decoder ({len(missing)} of {len(wanted)} tensors missing, "
                 f"first '{missing[0]}'); expected an MAE checkpoint with its decoder, e.g. mae_pretrain_vit_base_full.pth")
    for name, value in wanted.items():
        if state[name].shape != value.shape:
            sys.exit(f"--init-decoder: {path}: '{name}' has shape {tuple(state[name].shape)} but this decoder's is "
                     f'{tuple(value.shape)} (--decoder-depth/-dim/-heads; the official decoder is 8 x 512)')
    model.load_state_dict({k: state[k] for k in wanted}, strict=False)
    log(f'{path}: loaded {len(wanted)} decoder tensors')


def save_encoder(path, encoder, meta):
    """encoder.pth: the encoder alone, timm key names, loadable with strict=True (num_classes=0)."""
    state = {k: v.detach().cpu() for k, v in common.unwrap(encoder).state_dict().items()
             if not k.startswith(('head.', 'fc_norm.'))}
    common.atomic_write(path, partial(torch.save, {'model': state, 'meta': meta}))


# ----------------------------------------------------------------------------------------------
# One micro-batch: this rank's rows of the global micro-batch's random draws

def masked_batch(batch, seed, args, model, norm, rank, world, device):
    """Augmented, normalised images (n, 3, S, S) and ids_keep, ids_masked, t, noise for this rank.

    The draws are made for the global micro-batch (world * n rows; this rank's images sit at rows
    rank::world of a zero-padded batch) so that they do not depend on the number of processes.
    """
    mean, std, geometry = norm
    n = len(batch[0])
    total, rows = world * n, slice(rank, None, world)
    with common.seeded(seed, device):
        images = common.global_train_batch(batch, rank, world, device, mean, std, args.modality, args, geometry)[0]
        mask = make_masks(args.mask, total, model.grid, args.mask_ratio, rows, device)   # (n, L)
        ids_keep, ids_masked = split_ids(mask, num_masked(args.mask, model.grid, args.mask_ratio))
        t = noise = None
        if args.method == 'diffmae':
            t = torch.randint(args.min_timestep, args.timesteps, (total,), device=device)[rows]
            noise = torch.randn((total,) + ids_masked.shape[1:] + (model.patch ** 2 * 3,), device=device)[rows]
    return images, ids_keep, ids_masked, t, noise


# ----------------------------------------------------------------------------------------------
# Visualisation (--vis K)

@torch.no_grad()
def save_vis(path, model, raw_images, norm, args, device, epoch=None, names=None):
    """PNG: one row per sample (its name on the left); columns input, masked input (grey),
    reconstruction (visible + predicted), titled with the run and the epoch."""
    mean, std, _ = norm
    raw = raw_images.to(device).float()
    images = (raw - mean) / std
    with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
        torch.manual_seed(args.seed)                                               # the same masks every time
        mask = make_masks(args.mask, len(images), model.grid, args.mask_ratio, slice(None), device)
        ids_keep, ids_masked = split_ids(mask, num_masked(args.mask, model.grid, args.mask_ratio))
        pred = model.reconstruct(images, ids_keep, ids_masked)                    # (K, Lm, p*p*3)
    patches = patchify(images, model.patch)
    recon = torch.scatter(patches, 1, ids_masked[..., None].expand_as(pred), pred)
    grey = torch.scatter(patches, 1, ids_masked[..., None].expand_as(pred), torch.full_like(pred, float('nan')))
    columns = [raw, unpatchify(grey, model.patch) * std + mean, unpatchify(recon, model.patch) * std + mean]
    low = raw.amin(dim=(2, 3), keepdim=True)                                      # per-sample, per-channel range
    high = raw.amax(dim=(2, 3), keepdim=True)
    tiles = []
    for column in columns:
        pixels = ((column - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)
        pixels = torch.where(column.isnan(), torch.full_like(pixels, 0.5), pixels)
        tiles.append(pixels)
    grid = rearrange(torch.stack(tiles, dim=1), 'k col c h w -> k col h w c')    # (K, 3 columns, S, S, RGB)
    grid = (grid.cpu().numpy() * 255).round().astype(np.uint8)
    masked = num_masked(args.mask, model.grid, args.mask_ratio)
    run = os.path.basename(os.path.dirname(os.path.abspath(path)))
    title = f'{run}: epoch {epoch} ({args.method}, {args.mask} masking, {masked} of {model.grid ** 2} patches grey)'
    pictures.save_png(pictures.titled_grid(grid, ['input', 'masked', 'reconstruction'], names or [], title), path)


def spread_over_classes(labels, k):
    """k sample indices: the first of every class, then the second of every class, ... (so that a
    picture of k samples shows as many classes as it can)."""
    rank = np.zeros(len(labels), dtype=np.int64)                  # position of each sample within its class
    for c in np.unique(labels):
        rank[labels == c] = np.arange((labels == c).sum())
    return np.lexsort((labels, rank))[:k]


# ----------------------------------------------------------------------------------------------
# Training

def main(args):
    rank, world, device = common.init_distributed(args.device)
    log = print if rank == 0 else (lambda *a, **k: None)
    torch.manual_seed(args.seed)      # the same new decoder weights on every rank

    # data: the union of the train splits of --data, normalised by the first dataset's statistics (A.5)
    names = args.data.split(',')
    protocols = args.protocol.split(',') if args.protocol else [None] * len(names)
    if len(protocols) == 1:
        protocols = protocols * len(names)
    if len(protocols) != len(names):
        sys.exit(f'--protocol {args.protocol}: give one protocol or one per --data name ({len(names)})')
    protocols = [common.resolve_protocol(args.data_root, n, p) for n, p in zip(names, protocols)]
    args.protocol = ','.join(protocols)                  # resolved, so the run directory names it
    metas = [common.load_meta(args.data_root, n, p) for n, p in zip(names, protocols)]
    sizes = {n: m['size'] for n, m in zip(names, metas)}
    if len(set(sizes.values())) > 1:
        sys.exit(f'--data {args.data}: encoded at different sizes {sizes}; re-encode them with the same --size')
    size = metas[0]['size']
    if size % common.PATCH_SIZE:
        sys.exit(f'--data {names[0]}: image size {size} is not a multiple of the {common.PATCH_SIZE}-pixel patch')
    if args.modality not in metas[0].get('mean', {}):
        sys.exit(f'--data {names[0]}: meta.json has no {args.modality} statistics; encode that modality')
    splits = [common.read_split(args.data_root, n, p, 'train', args.modality) for n, p in zip(names, protocols)]
    dataset = common.S2IDataset([s[0] for s in splits], [s[1] for s in splits])
    if args.batch_size % (world * args.accum_iter):
        sys.exit(f'--batch-size {args.batch_size} is not divisible by world size {world} x --accum-iter {args.accum_iter}')
    micro = args.batch_size // (world * args.accum_iter)
    loader, sampler = common.make_loader(dataset, micro, True, args.num_workers, args.seed, device)
    steps_per_epoch = len(loader) // args.accum_iter
    if steps_per_epoch == 0:
        sys.exit(f'{len(dataset)} train samples give no full optimizer step of --accum-iter {args.accum_iter}')
    mean, std = common.channel_stats(metas[0], args.modality, device)
    geometry = common.skeleton_geometry(metas, args, device, dataset.offsets[:-1].tolist())  # 2D or 3D, mirror flips
    norm = (mean, std, geometry)     # every dataset normalised with the first one's statistics (A.5)
    out_dir = common.output_dir(args, 'pretrain', args.method)
    if rank == 0:
        common.make_output_dir(out_dir)
    common.warn_if_batch_exceeds(args.batch_size, len(dataset), rank)
    log(f'{len(dataset)} train images of {size}x{size} from {", ".join(f"{n}/{p}" for n, p in zip(names, protocols))}; '
        f'{world} process(es) x micro-batch {micro} x accum {args.accum_iter} = batch {args.batch_size}; '
        f'{steps_per_epoch} steps/epoch -> {out_dir}')

    # model and optimizer
    model = build_model(args, size)
    ckpt_path = common.resume_path(args.resume, out_dir)
    if ckpt_path is None:                                    # a resumed run takes its weights from the checkpoint
        init_encoder(model.encoder, args.init, args.model, log=log)
        if args.init_decoder:
            init_decoder(model, args.init, log=log)
    model.to(device)
    log(f'{args.method} on {args.model}: {sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.1f}M '
        f'trained parameters, {num_masked(args.mask, model.grid, args.mask_ratio)}/{model.grid ** 2} patches masked ({args.mask})')
    lr = args.lr if args.lr is not None else args.blr * args.batch_size / 256
    optimizer = common.adamw(common.param_groups(model, args.weight_decay), device, lr=lr, betas=(0.9, 0.95))  # Table 10
    start_epoch, step, checkpoint = 0, 0, None
    if ckpt_path:
        checkpoint = common.restore_checkpoint(ckpt_path, model, optimizer, 'pretrain')
        start_epoch, step = checkpoint['epoch'], checkpoint['step']
        log(f'resumed from {ckpt_path} at epoch {start_epoch}')
    bare = model
    if args.compile:
        model = torch.compile(model)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None)
    total_steps, warmup_steps = args.epochs * steps_per_epoch, args.warmup_epochs * steps_per_epoch
    autocast = partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=common.use_bf16(args, device))

    log_path = os.path.join(out_dir, 'log.jsonl')
    if rank == 0:
        common.restart_log(log_path, start_epoch)
    vis_images = None
    if args.vis:   # K train images spread over the classes, read through their own dataset (the loader's stays unopened)
        vis_set = common.S2IDataset([splits[0][0]], [splits[0][1]])
        shown = spread_over_classes(splits[0][1], args.vis)
        vis_images = vis_set.__getitems__(shown.tolist())[0]
        classes = metas[0].get('class_names') or []
        vis_names = [f'{splits[0][2][i]}, {classes[label] if label < len(classes) else f"class {label}"}'
                     for i, label in zip(shown, splits[0][1][shown])]

    def save(epoch):
        if rank != 0:
            return
        common.save_checkpoint(out_dir, model, optimizer, epoch, args, 'pretrain', step=step)
        save_encoder(os.path.join(out_dir, 'encoder.pth'), bare.encoder,
                     {'model': args.model, 'size': size, 'method': args.method, 'data': args.data,
                      'protocol': ','.join(protocols), 'modality': args.modality, 'epoch': epoch})
        pictures.save_curves(out_dir, f'{args.method} pretraining, {args.data}/{args.protocol}/{args.modality}')
        if args.vis:
            save_vis(os.path.join(out_dir, f'vis_{epoch:04d}.png'), bare, vis_images, norm, args, device, epoch, vis_names)

    def check_finite(mean_loss, where):
        """Stop on a NaN/inf loss before anything is saved: checkpoint.pth stays the last good one."""
        if not torch.isfinite(mean_loss):
            common.cleanup_distributed()
            message = (f'pretrain: loss is {mean_loss.item()} at {where}; stopped, keeping the last good '
                       f'checkpoint in {out_dir} (try a lower --blr, or check the data)')
            sys.exit(message if rank == 0 else 1)

    last_epoch = args.epochs if args.stop_after is None else min(args.epochs, args.stop_after)
    for epoch in range(start_epoch, last_epoch):
        sampler.set_epoch(epoch)
        model.train()
        batches = iter(loader)
        loss_sum = torch.zeros((), device=device)          # summed on the device: no sync per step
        start = time.time()
        status = ''
        for i in common.progress(range(steps_per_epoch), f'epoch {epoch}', steps_per_epoch, args.batch_size,
                                 args.print_every, lambda: status,
                                 run=(epoch * steps_per_epoch, last_epoch * steps_per_epoch)):
            current_lr = common.lr_at(step, total_steps, warmup_steps, lr, args.min_lr)   # per iteration
            common.set_lr(optimizer, current_lr)
            for k in range(args.accum_iter):
                images, ids_keep, ids_masked, t, noise = masked_batch(
                    next(batches), common.step_seed(args.seed, step * args.accum_iter + k), args, bare, norm, rank, world, device)
                sync = k + 1 == args.accum_iter or world == 1
                with (contextlib.nullcontext() if sync else model.no_sync()), autocast():
                    loss = model(images, ids_keep, ids_masked, t, noise)
                (loss / args.accum_iter).backward()
                loss_sum += loss.detach() / args.accum_iter
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if args.print_every and (i + 1) % args.print_every == 0:
                mean_loss = common.all_reduce_mean(loss_sum) / (i + 1)
                check_finite(mean_loss, f'epoch {epoch} step {i + 1}')
                status = f'loss {mean_loss.item():.4f} lr {current_lr:.3g}'
        epoch_loss = common.all_reduce_mean(loss_sum) / steps_per_epoch
        check_finite(epoch_loss, f'the end of epoch {epoch}')
        elapsed = time.time() - start
        if rank == 0:
            common.log_jsonl(log_path, {'epoch': epoch, 'loss': epoch_loss.item(),
                                        'lr': current_lr,
                                        'images_per_s': steps_per_epoch * args.batch_size / elapsed, 'time': elapsed})
            log(f'epoch {epoch}: loss {epoch_loss.item():.4f} ({elapsed:.1f}s)')
        if (epoch + 1) % args.save_every == 0 or epoch + 1 == last_epoch:
            save(epoch + 1)
    common.finish(start_epoch, last_epoch, log)


if __name__ == '__main__':
    common.main_guard(main, get_args)
