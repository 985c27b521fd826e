"""What pretrain.py, probe.py and finetune.py share, and nothing else.

Encoded-dataset reader, batch augmentation, ViT build and weight loading, torchrun/DDP set-up,
warmup + cosine schedule, atomic writes of every final file, checkpoints, JSON-lines log, progress
lines, and the epochs and result files of probe and finetune. The pictures are pictures.py's.
"""
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from functools import partial

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

import pictures

# Default protocol of each dataset (docs/DATA.md); used when --protocol is not given.
DEFAULT_PROTOCOL = {'ntu60': 'xsub', 'ntu120': 'xsub', 'pku1': 'xsub', 'pku2': 'xsub',
                    'ucla': 'xview', 'toyota': 'xsub'}


# ----------------------------------------------------------------------------------------------
# Command line pieces every training stage has (stage-specific hyperparameters stay in the stage)

def add_data_args(parser, batch_size, epochs):
    group = parser.add_argument_group('data (written by encode.py)')
    group.add_argument('--data', default='synthetic',
                       help='dataset name, or several joined by commas (universal pretraining, A.5)')
    group.add_argument('--data-root', default='data', help='the --out of encode.py')
    group.add_argument('--protocol', default=None, help='default: the dataset\'s standard protocol')
    group.add_argument('--modality', default='joint', choices=['joint', 'bone', 'motion'])
    group.add_argument('--batch-size', type=int, default=batch_size, help='global, split over processes')
    group.add_argument('--epochs', type=int, default=epochs)
    group.add_argument('--num-workers', type=int, default=2, help='data loader processes per rank')


def add_run_args(parser, stage):
    group = parser.add_argument_group('run')
    group.add_argument('--model', default='vit_base_patch16', choices=list(MODELS))
    group.add_argument('--init', default='imagenet' if stage == 'pretrain' else None,
                       help="encoder weights to start from: 'imagenet' (timm hub), 'none', or a checkpoint path")
    group.add_argument('--output-dir', default=None, help=f'default: runs/{stage}/{{data}}_{{protocol}}_{{modality}}_{{method}}')
    group.add_argument('--resume', default=None, help="checkpoint.pth to continue from, or 'auto' for the output dir's")
    if stage != 'pretrain':
        group.add_argument('--eval', action='store_true',
                           help="score the --resume checkpoint on --data's test split without training (MAE's --eval): "
                                'result.json, test logits, labels, names and confusion.png in the output dir')
    group.add_argument('--seed', type=int, default=0)
    group.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'])
    group.add_argument('--compile', action='store_true', help='torch.compile the model')
    group.add_argument('--precision', default='auto', choices=['auto', 'bf16', 'fp32'],
                       help="'auto': bf16 autocast on CUDA, float32 on the CPU; 'bf16' forces autocast on the CPU too")
    group.add_argument('--save-every', type=int, default=10, help='epochs between checkpoints')
    group.add_argument('--stop-after', type=int, default=None, metavar='EPOCH',
                       help='end this run after EPOCH epochs (checkpoint written); --resume continues the '
                            'same schedule, e.g. to split a long run into cluster jobs')


def check_args(args):
    """Refuse the numbers that would make a run do nothing, divide by zero or train on garbage."""
    for flag in ('batch_size', 'epochs', 'save_every', 'stop_after', 'eval_every', 'accum_iter'):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            sys.exit(f'--{flag.replace("_", "-")} {value}: expected a whole number of at least 1')
    for flag in ('num_workers', 'warmup_epochs', 'print_every'):
        value = getattr(args, flag, None)
        if value is not None and value < 0:
            sys.exit(f'--{flag.replace("_", "-")} {value}: expected 0 or more')


def warn_if_batch_exceeds(batch_size, num_samples, rank):
    """A global batch larger than the train split still trains, one short step per epoch: say so."""
    if batch_size > num_samples and rank == 0:
        print(f'warning: --batch-size {batch_size} is larger than the {num_samples} train samples; '
              f'every epoch is one step of {num_samples}', file=sys.stderr)


def use_bf16(args, device):
    """bf16 autocast: always on CUDA under --precision auto, on the CPU only when asked (--precision bf16)."""
    return args.precision == 'bf16' or (args.precision == 'auto' and device.type == 'cuda')


def adamw(groups, device, **settings):
    """AdamW with the fused kernel wherever this torch has one for the device (CUDA, and the CPU since 2.4)."""
    try:
        return torch.optim.AdamW(groups, fused=True, **settings)
    except RuntimeError:
        return torch.optim.AdamW(groups, fused=False, **settings)


def add_augment_args(parser):
    """The skeleton augmentation of A.2, used by pretraining, probing and fine-tuning alike."""
    group = parser.add_argument_group('augmentation (A.2: flip, rotation, affine, Gaussian noise)')
    group.add_argument('--aug-space', default='skeleton', choices=['skeleton', 'image', 'none'],
                       help="'skeleton': exact transforms of the coordinates (channels); "
                            "'image': the same names as image transforms of the picture; 'none': off")
    group.add_argument('--flip-prob', type=float, default=0.5)
    group.add_argument('--flip', default='mirror', choices=['mirror', 'x-only'],
                       help="skeleton-space flip: 'mirror' negates x and swaps every left joint with its right "
                            "partner (joints.yaml flip_pairs), as a mirror does; 'x-only' negates x alone")
    group.add_argument('--rotate', type=float, default=15.0, help='max rotation, degrees (per axis in skeleton space)')
    group.add_argument('--scale', type=float, default=0.1, help='scale factor drawn from [1-s, 1+s]')
    group.add_argument('--translate', type=float, default=0.1,
                       help='max shift: coordinate units (skeleton) or fraction of the half image (image)')
    group.add_argument('--noise-std', type=float, default=0.01, help='Gaussian noise, coordinate units')


def output_dir(args, stage, method):
    if args.output_dir:
        return args.output_dir
    name = f"{args.data}_{args.protocol or 'default'}_{args.modality}_{method}".replace(',', '+')
    return os.path.join('runs', stage, name)


def make_output_dir(path):
    """Create the run directory and write a scratch file there, so a bad --output-dir stops the run
    before any work rather than at its first checkpoint."""
    if os.path.exists(path) and not os.path.isdir(path):
        sys.exit(f'--output-dir {path}: is a file, expected a directory')
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        sys.exit(f'--output-dir {path}: cannot write there ({error.strerror})')


# ----------------------------------------------------------------------------------------------
# torchrun / DDP

def init_distributed(device_arg):
    """torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; a plain `python X.py` is a world of one."""
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    rank = int(os.environ.get('RANK', 0))
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    if device_arg == 'cuda' and not torch.cuda.is_available():
        sys.exit('--device cuda: no CUDA device is visible')
    use_cuda = device_arg == 'cuda' or (device_arg == 'auto' and torch.cuda.is_available())
    device = torch.device('cuda', local_rank) if use_cuda else torch.device('cpu')
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group('nccl' if use_cuda else 'gloo', rank=rank, world_size=world_size)
    return rank, world_size, device


def cleanup_distributed():
    """Barrier first, so that no rank tears the group down while a peer is still busy (gloo may abort it)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_mean(value):
    """Mean of a tensor over ranks (no-op in a world of one)."""
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def step_seed(*keys):
    """An RNG seed that is a function of the keys only (--seed and the step index): a resumed run
    draws at each step the numbers the uninterrupted run drew there."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> 1)


@contextlib.contextmanager
def seeded(seed, device):
    """The global torch RNG (and this CUDA device's) seeded with `seed` inside, restored after."""
    with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
        torch.manual_seed(seed)
        yield


def global_train_batch(batch, rank, world, device, mean, std, modality, args, geometry):
    """Augmented, normalised train images and the labels of this rank's batch.

    The augmentation is drawn for the global batch (world * n rows; this rank's images sit at rows
    rank::world, as DistributedSampler deals them, the others are zeros), so that every sample gets
    the same draws in 1 and in N processes.
    """
    images, labels, positions = batch
    if world > 1:
        images = images.to(device, non_blocking=True)
        padded = images.new_zeros((world * len(images),) + images.shape[1:])      # (world * n, 3, S, S)
        padded[rank::world] = images
        padded_positions = positions.new_zeros(len(padded))
        padded_positions[rank::world] = positions
        batch = (padded, torch.zeros(len(padded), dtype=torch.long), padded_positions)
    images = prepare_batch(batch, device, mean, std, modality, args, geometry, train=True)[0][rank::world]
    return images, labels.to(device, non_blocking=True)


def gather_by_index(values, indices, num_samples):
    """Reassemble per-rank eval outputs in dataset order.

    DistributedSampler deals samples round-robin and pads the last round with repeats, so every
    rank holds the same count; gather them all and place each row at its sample index.
    """
    if dist.is_initialized():
        world = dist.get_world_size()
        all_values = [torch.empty_like(values) for _ in range(world)]
        all_indices = [torch.empty_like(indices) for _ in range(world)]
        dist.all_gather(all_values, values)
        dist.all_gather(all_indices, indices)
        values, indices = torch.cat(all_values), torch.cat(all_indices)
    out = values.new_zeros((num_samples,) + tuple(values.shape[1:]))
    out[indices] = values
    return out


# ----------------------------------------------------------------------------------------------
# Encoded data (the layout encode.py writes, docs/DATA.md)

def resolve_protocol(data_root, data, protocol):
    """--protocol if given, else the only protocol encoded, else the dataset's standard one."""
    if protocol:
        return protocol
    folder = os.path.join(data_root, data)
    encoded = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    if len(encoded) == 1:
        return encoded[0]
    return DEFAULT_PROTOCOL.get(data, encoded[0] if encoded else 'default')


META_KEYS = ('num_classes', 'size', 'mean', 'std')   # what the training stages read from meta.json


def load_meta(data_root, data, protocol):
    path = os.path.join(data_root, data, protocol, 'meta.json')
    encode_hint = f'python encode.py --data {data} --out {data_root}'
    if not os.path.isfile(path):
        sys.exit(f'{path}: not found; encode the dataset first: {encode_hint}')
    try:
        with open(path) as f:
            meta = json.load(f)
    except (ValueError, UnicodeDecodeError) as error:
        sys.exit(f'{path}: not valid JSON ({error}); re-encode: {encode_hint}')
    missing = [key for key in META_KEYS if not isinstance(meta, dict) or key not in meta]
    if missing or not isinstance(meta['mean'], dict) or not isinstance(meta['std'], dict):
        found = 'no ' + ', '.join(missing) if missing else 'mean/std not per modality'
        sys.exit(f'{path}: an older or foreign format ({found}); re-encode with this encode.py: {encode_hint}')
    return meta


def read_split(data_root, data, protocol, split, modality):
    """Paths and labels of one encoded split: (images_path, labels (N,) int64, names)."""
    folder = os.path.join(data_root, data, protocol)
    images_path = os.path.join(folder, f'{split}_{modality}.npy')
    labels_path, names_path = os.path.join(folder, f'{split}_labels.npy'), os.path.join(folder, f'{split}_names.txt')
    for path in (images_path, labels_path, names_path):
        if not os.path.isfile(path):
            sys.exit(f'{path}: not found; encode it with: python encode.py --data {data} --modality {modality}')
    try:
        labels = np.load(labels_path)
        shape = np.load(images_path, mmap_mode='r').shape
    except (OSError, ValueError) as error:
        sys.exit(f'{folder}: {split} split unreadable ({error}); re-encode it')
    with open(names_path) as f:
        names = f.read().splitlines()
    if len(shape) != 4 or shape[1] != 3 or shape[0] != len(labels) or len(names) != len(labels):
        sys.exit(f'{images_path}: expected (N, 3, S, S) with N = {len(labels)} labels and names, found {shape}')
    return images_path, labels, names


class S2IDataset(torch.utils.data.Dataset):
    """Encoded S2I images of one or more splits, read batch-wise from memory maps.

    A batch is one ascending fancy-index read per file instead of B small reads, returned in the
    order asked for; the maps are opened lazily so that worker processes each open their own.
    """

    def __init__(self, images_paths, labels_list, subset=None):
        self.images_paths = list(images_paths)
        self.labels = np.concatenate(labels_list).astype(np.int64)
        self.offsets = np.cumsum([0] + [len(labels) for labels in labels_list])
        self.subset = None if subset is None else np.asarray(subset, dtype=np.int64)
        self.maps = None

    def __len__(self):
        return len(self.labels) if self.subset is None else len(self.subset)

    def __getitems__(self, positions):
        """(images float16 (B, 3, S, S), labels (B,), positions (B,)) for dataset positions, in that order."""
        if self.maps is None:
            self.maps = [np.load(path, mmap_mode='r') for path in self.images_paths]
        positions = np.asarray(positions, dtype=np.int64)
        indices = positions if self.subset is None else self.subset[positions]
        order = np.argsort(indices, kind='stable')
        file_of = np.searchsorted(self.offsets, indices[order], side='right') - 1
        images = np.empty((len(indices),) + self.maps[0].shape[1:], dtype=np.float16)
        for f in np.unique(file_of):
            rows = order[file_of == f]                     # batch rows whose images live in file f
            images[rows] = self.maps[f][indices[rows] - self.offsets[f]]
        return torch.from_numpy(images), torch.from_numpy(self.labels[indices]), torch.from_numpy(positions)

    def __getitem__(self, position):
        images, labels, positions = self.__getitems__([position])
        return images[0], labels[0], positions[0]


def keep_batch(batch):
    """collate_fn for S2IDataset, whose __getitems__ already returns a whole batch."""
    return batch


def make_loader(dataset, batch_size, train, num_workers, seed, device):
    """A DataLoader over this rank's share; returns (loader, sampler) so callers can set_epoch.

    DistributedSampler is used in a world of one too: the global batch order then depends on the
    seed and epoch only, so resumed and multi-process runs see the same batches.
    """
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank,
                                                  shuffle=train, seed=seed, drop_last=train)
    drop_last = train and len(sampler) >= batch_size   # keep one short batch on a tiny dataset
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=num_workers,
        collate_fn=keep_batch, pin_memory=device.type == 'cuda',
        persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers > 0 else None)
    return loader, sampler


def channel_stats(meta, modality, device):
    """Per-channel mean and std of the train split, shaped to broadcast over (N, 3, S, S)."""
    mean = torch.tensor(meta['mean'][modality], dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(meta['std'][modality], dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return mean, std.clamp_min(1e-6)


def is_planar(meta):
    """2D keypoint formats carry (x, y, score): only x and y are geometry."""
    return meta.get('channels', ['x', 'y', 'z'])[2] == 'score'


def mirror_matrix(columns, size):
    """(size, size) M such that image @ M is the S2I image of the skeleton whose left and right joints
    are swapped; columns: meta.json's `mirror`, each image column's partner column (J,).

    S2I is linear along the joint axis: image = A_t X A_j^T with A_j (size, J) the interpolation
    matrix, of full column rank for size >= J, so pinv(A_j^T) recovers X's joint columns exactly and
    M = pinv(A_j^T) P A_j^T (P the pair swap) holds for the joint, bone and motion streams alike.
    """
    eye = torch.eye(len(columns), dtype=torch.float64)[None]
    spread = F.interpolate(eye, size=size, mode='linear', align_corners=True)[0]     # (J, S) = A_j^T
    return (torch.linalg.pinv(spread)[:, columns] @ spread).float()                 # (S, S)


def skeleton_geometry(metas, args, device, starts=(0,)):
    """What skeleton-space augmentation needs beside the images: planar (2D keypoints) and, for the mirror
    flip, each dataset's mirror_matrix; starts: each dataset's first position in the stage's dataset."""
    planar = {f"{m['dataset']}/{m['protocol']}": is_planar(m) for m in metas}
    if len(set(planar.values())) > 1:
        sys.exit(f'--data {args.data}: mixes 2D keypoints (x, y, score) and 3D joints {planar}; pretrain them separately')
    mirrors = None
    if args.aug_space == 'skeleton' and args.flip == 'mirror' and args.flip_prob > 0:
        for meta in metas:
            where = f"--flip mirror: {meta['dataset']}/{meta['protocol']} ({meta.get('format', 'format unknown')})"
            if not meta.get('mirror'):
                sys.exit(f'{where}: meta.json names no left/right joints (joints.yaml flip_pairs; re-encode with '
                         'this encode.py); or use --flip x-only or --flip-prob 0')
            if meta['size'] < len(meta['mirror']):
                sys.exit(f"{where}: {meta['size']}-pixel images hold fewer columns than its {len(meta['mirror'])} joints, "
                         'so the mirror is not exact; encode at --size >= the joint count or use --flip x-only')
        mirrors = torch.stack([mirror_matrix(m['mirror'], m['size']) for m in metas]).to(device)  # (D, S, S)
    return dict(planar=next(iter(planar.values())), mirrors=mirrors,
                starts=torch.tensor(starts, dtype=torch.long, device=device))


# ----------------------------------------------------------------------------------------------
# Augmentation, on whole batches on the device, in raw coordinates (before normalisation)

def random_rotation(n, max_degrees, planar, device):
    """(n, 3, 3) rotations: about z only for 2D keypoints, else about x, then y, then z."""
    angles = (torch.rand(n, 3, device=device) * 2 - 1) * math.radians(max_degrees)
    if planar:
        angles[:, :2] = 0
    cos, sin = angles.cos(), angles.sin()
    one, zero = torch.ones(n, device=device), torch.zeros(n, device=device)
    rx = torch.stack([one, zero, zero, zero, cos[:, 0], -sin[:, 0], zero, sin[:, 0], cos[:, 0]], 1)
    ry = torch.stack([cos[:, 1], zero, sin[:, 1], zero, one, zero, -sin[:, 1], zero, cos[:, 1]], 1)
    rz = torch.stack([cos[:, 2], -sin[:, 2], zero, sin[:, 2], cos[:, 2], zero, zero, zero, one], 1)
    return rz.view(n, 3, 3) @ ry.view(n, 3, 3) @ rx.view(n, 3, 3)


def augment(images, modality, args, planar=False, mirror=None):
    """Flip, rotation, affine scale/translate and Gaussian noise (A.2) on a batch (N, 3, S, S).

    Skeleton space: S2I interpolation is linear, so rotating/scaling every joint is the same 3x3
    matrix applied to every pixel's channels, and a flip negates x and, with --flip mirror, swaps the
    left and right joints' columns by mirror (S, S) or (N, 1, S, S) (mirror_matrix). Translation moves
    positions only: bone and motion are differences and do not change. Image space: the picture
    itself is flipped left-right and warped, as an image pipeline would.
    """
    if args.aug_space == 'none':
        return images
    n, device = images.shape[0], images.device
    flip = torch.rand(n, device=device) < args.flip_prob
    scale = 1 + (torch.rand(n, device=device) * 2 - 1) * args.scale
    if args.aug_space == 'skeleton':
        matrix = random_rotation(n, args.rotate, planar, device)                 # (N, 3, 3)
        axis_scale = 1 + (torch.rand(n, 3, device=device) * 2 - 1) * args.scale
        mirror_x = torch.ones(n, 3, device=device)
        mirror_x[:, 0] = torch.where(flip, -1.0, 1.0)
        if planar:  # the score channel is not geometry
            axis_scale[:, 2] = 1
            matrix[:, 2, :], matrix[:, :, 2] = 0, 0
            matrix[:, 2, 2] = 1
        matrix = matrix * (axis_scale * mirror_x)[:, None, :]                   # R @ diag(scale * mirror_x)
        if args.flip == 'mirror' and args.flip_prob > 0:
            if mirror is None:
                raise ValueError('--flip mirror: augment() needs the mirror matrix (common.skeleton_geometry)')
            images = torch.where(flip[:, None, None, None], images @ mirror, images)   # left <-> right columns
        images = torch.einsum('nij,njhw->nihw', matrix, images)
        if modality == 'joint' and args.translate > 0:
            shift = (torch.rand(n, 3, 1, 1, device=device) * 2 - 1) * args.translate
            if planar:
                shift[:, 2] = 0
            images = images + shift
    else:
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
        angle = (torch.rand(n, device=device) * 2 - 1) * math.radians(args.rotate)
        shift = (torch.rand(n, 2, device=device) * 2 - 1) * args.translate
        theta = torch.stack([torch.stack([angle.cos(), -angle.sin(), shift[:, 0]], 1),
                             torch.stack([angle.sin(), angle.cos(), shift[:, 1]], 1)], 1)
        theta[:, :, :2] /= scale[:, None, None]                                    # (N, 2, 3)
        grid = F.affine_grid(theta, list(images.shape), align_corners=True)
        images = F.grid_sample(images, grid, mode='bilinear', padding_mode='border', align_corners=True)
    if args.noise_std > 0:
        noise = torch.randn_like(images) * args.noise_std
        if planar:
            noise[:, 2] = 0
        images = images + noise
    return images


def prepare_batch(batch, device, mean, std, modality, args, geometry=None, train=False):
    """float16 batch from the loader -> augmented (train only: geometry from skeleton_geometry),
    normalised float32 on the device."""
    images, labels, positions = batch
    images = images.to(device, non_blocking=True).float()
    labels = labels.to(device, non_blocking=True)
    positions = positions.to(device, non_blocking=True)
    if train:
        mirror = geometry['mirrors']                                             # (D, S, S) or None
        if mirror is not None:                                                  # each sample's dataset's
            mirror = mirror[0] if len(mirror) == 1 else \
                mirror[torch.bucketize(positions, geometry['starts'], right=True) - 1][:, None]
        images = augment(images, modality, args, geometry['planar'], mirror)
    return (images - mean) / std, labels, positions


# ----------------------------------------------------------------------------------------------
# Vision transformers (timm blocks and key names) and their weights

# name -> (embed_dim, depth, num_heads); all use 16x16 patches and MLP ratio 4.
MODELS = {
    'vit_base_patch16': (768, 12, 12),
    'vit_small_patch16': (384, 12, 6),
    'vit_tiny_patch16': (192, 12, 3),
    'vit_test': (32, 2, 2),
}
# ImageNet weights per model: MAE's ViT-B (the paper's start), timm's default tag otherwise.
IMAGENET_WEIGHTS = {
    'vit_base_patch16': 'vit_base_patch16_224.mae',
    'vit_small_patch16': 'vit_small_patch16_224',
    'vit_tiny_patch16': 'vit_tiny_patch16_224',
}
PATCH_SIZE = 16


POOLS = {'cls': 'token', 'mean': 'avg'}   # --pool of probe.py / finetune.py -> timm's global_pool


def build_encoder(model, img_size=224, num_classes=0, drop_path_rate=0.0, pool='cls'):
    """timm VisionTransformer with a class token; its state_dict keys are timm's. The feature is the
    class token (S2I 4.2) or, with pool='mean', the mean of the patch tokens; both after the final
    norm, so a pretrained encoder's norm is used either way (fc_norm=False)."""
    from timm.models.vision_transformer import VisionTransformer
    embed_dim, depth, num_heads = MODELS[model]
    encoder = VisionTransformer(
        img_size=img_size, patch_size=PATCH_SIZE, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
        mlp_ratio=4, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_classes=num_classes, global_pool=POOLS[pool], fc_norm=False, drop_path_rate=drop_path_rate)
    with torch.no_grad():
        encoder.pos_embed.copy_(sincos_pos_embed(embed_dim, img_size // PATCH_SIZE, cls_token=True))
    return encoder


def sincos_pos_embed(dim, grid_size, cls_token=False):
    """Fixed 2D sin-cos position embedding (1, [1 +] L, dim), rows = time, columns = joints.

    Half the channels encode the column and half the row, in MAE's order, so that ImageNet MAE
    weights see the positions they were trained with. The class token gets zeros.
    """
    def one_axis(positions, half):                                   # (L,) -> (L, half)
        omega = 1.0 / 10000 ** (torch.arange(half // 2, dtype=torch.float64) / (half // 2))
        angles = positions[:, None] * omega[None]
        return torch.cat([angles.sin(), angles.cos()], 1)

    rows, cols = torch.meshgrid(torch.arange(grid_size, dtype=torch.float64),
                                torch.arange(grid_size, dtype=torch.float64), indexing='ij')
    embed = torch.cat([one_axis(cols.flatten(), dim // 2), one_axis(rows.flatten(), dim // 2)], 1)
    if cls_token:
        embed = torch.cat([torch.zeros(1, dim, dtype=torch.float64), embed])
    return embed.float().unsqueeze(0)


def unwrap(model):
    """The bare module under DDP and torch.compile wrappers."""
    model = getattr(model, 'module', model)
    return getattr(model, '_orig_mod', model)


def encoder_state_dict(state):
    """Encoder weights in timm key names from any checkpoint layout we accept.

    Accepts {'model': ...} (official MAE, ours), {'state_dict': ...}, a bare state_dict, and the
    prefixes DDP ('module.'), torch.compile ('_orig_mod.') and our pretrain model ('encoder.') add.
    Returns (encoder_state, dropped) where dropped lists decoder and classifier keys.
    """
    for key in ('model', 'state_dict', 'module'):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    encoder, dropped = {}, []
    for name, value in state.items():
        if not isinstance(name, str):
            continue
        for prefix in ('module.', '_orig_mod.', 'encoder.'):
            name = name[len(prefix):] if name.startswith(prefix) else name
        if name.startswith(('decoder', 'mask_token', 'head.', 'fc_norm.')) or not torch.is_tensor(value):
            dropped.append(name)
        else:
            encoder[name] = value
    return encoder, dropped


def load_encoder_weights(encoder, init, model, log=print):
    """Load --init into a timm ViT: 'none', 'imagenet' (timm hub) or a checkpoint path.

    Position embeddings are resampled when the patch grid differs; a shape mismatch or a missing
    encoder weight is an error (wrong --model), decoder and classifier keys are reported.
    """
    if init in (None, 'none'):
        return
    if init == 'imagenet':
        if model not in IMAGENET_WEIGHTS:
            sys.exit(f'--init imagenet: no ImageNet weights for --model {model}; use --init none or a path')
        import timm
        hub_name = IMAGENET_WEIGHTS[model]
        offline_file = 'mae_pretrain_vit_base.pth (official MAE)' if model == 'vit_base_patch16' else f'{hub_name} weights'
        overlay, failure = {}, None
        if not hub_reachable():                  # only the local cache: the hub's retries take ~50 s offline
            cached = cached_hub_file(f'timm/{hub_name}')
            overlay, failure = (dict(file=cached), None) if cached else ({}, 'the hub is unreachable and not cached')
        if failure is None:
            try:
                state = timm.create_model(hub_name, pretrained=True, num_classes=0,
                                          pretrained_cfg_overlay=overlay).state_dict()
            except Exception as error:
                failure = type(error).__name__
        if failure:
            sys.exit(f"--init imagenet: could not download timm weights '{hub_name}' ({failure}); "
                     f"download {offline_file} on a machine with internet and pass --init PATH")
        source = hub_name
    else:
        if not os.path.isfile(init):
            sys.exit(f'--init {init}: no such file (expected imagenet, none or a checkpoint path)')
        state = read_torch_file(init, '--init')
        source = init
    state, dropped = encoder_state_dict(state)
    if not state:
        sys.exit(f'{source}: holds no weight tensors; expected an encoder.pth, checkpoint.pth or MAE/timm checkpoint')
    target = encoder.state_dict()
    for name, value in state.items():   # every check before the position embedding is resampled
        if name == 'pos_embed' and value.ndim == 3 and value.shape[-1] == target[name].shape[-1]:
            continue
        if name in target and value.shape != target[name].shape:
            sys.exit(f"{source}: '{name}' has shape {tuple(value.shape)} but --model {model} expects "
                     f"{tuple(target[name].shape)}: the checkpoint is for another architecture")
    missing = [k for k in target if k not in state and not k.startswith(('head.', 'fc_norm.'))]
    if missing:
        sys.exit(f'{source}: {len(missing)} encoder weights missing for --model {model} '
                 f'(first: {missing[:3]}): the checkpoint is for another architecture')
    if state['pos_embed'].shape != target['pos_embed'].shape:
        from timm.layers import resample_abs_pos_embed
        grid = int(math.isqrt(target['pos_embed'].shape[1] - 1))
        state['pos_embed'] = resample_abs_pos_embed(state['pos_embed'], new_size=(grid, grid), num_prefix_tokens=1)
        log(f'{source}: position embedding resampled to a {grid}x{grid} grid')
    result = encoder.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        log(f'{source}: ignored {len(result.unexpected_keys)} unexpected keys: {result.unexpected_keys[:5]}')
    if dropped:
        log(f'{source}: ignored {len(dropped)} decoder/classifier keys (e.g. {dropped[:3]})')
    log(f'{source}: loaded {len(state) - len(result.unexpected_keys)} encoder tensors')


def hub_reachable(timeout=3.0):
    """False at once under HF_HUB_OFFLINE, else whether the Hugging Face hub (HF_ENDPOINT) accepts a TCP
    connection within `timeout` seconds. Behind a proxy (HTTPS_PROXY) the hub is assumed reachable."""
    import socket
    from urllib.parse import urlparse
    if os.environ.get('HF_HUB_OFFLINE', '').lower() in ('1', 'true', 'yes', 'on'):
        return False
    if os.environ.get('HTTPS_PROXY') or os.environ.get('https_proxy'):
        return True
    url = urlparse(os.environ.get('HF_ENDPOINT', 'https://huggingface.co'))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def cached_hub_file(repo_id):
    """Path of a hub repository's model.safetensors in the local Hugging Face cache, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    path = try_to_load_from_cache(repo_id, 'model.safetensors')
    return path if isinstance(path, str) else None


# ----------------------------------------------------------------------------------------------
# Optimisation

NO_WEIGHT_DECAY = ('token', 'pos_embed')  # cls_token, mask_token, pos_embed, decoder_pos_embed


def param_groups(model, weight_decay, lr_scale_of=None):
    """AdamW groups: no decay on norms, biases, tokens and position embeddings.

    lr_scale_of(name) -> float gives each parameter an lr multiplier (layer-wise decay); the
    schedule multiplies every group's lr by its 'lr_scale'.
    """
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = param.ndim > 1 and not name.endswith(NO_WEIGHT_DECAY)
        scale = lr_scale_of(name) if lr_scale_of else 1.0
        key = (decay, scale)
        if key not in groups:
            groups[key] = {'params': [], 'weight_decay': weight_decay if decay else 0.0, 'lr_scale': scale}
        groups[key]['params'].append(param)
    return list(groups.values())


def lr_at(step, total_steps, warmup_steps, base_lr, min_lr=0.0):
    """Per-iteration linear warmup from 0, then half-cycle cosine down to min_lr (MAE's schedule)."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group['lr'] = lr * group.get('lr_scale', 1.0)


def current_lr(optimizer):
    """The unscaled schedule value (the group whose lr_scale is 1: the head)."""
    return max(group['lr'] for group in optimizer.param_groups)


# ----------------------------------------------------------------------------------------------
# Checkpoints and logs

def atomic_write(path, write, mode='wb'):
    """Every final file of a run (checkpoint, encoder, result.json, .npy, .txt, log.jsonl rewrite):
    write(f) fills a temporary name, which is then renamed, so a killed run never leaves a half file,
    and a full disk stops the run with one line while the previous file stays as it was."""
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    tmp = path + '.tmp'
    try:
        with open(tmp, mode) as f:      # a Python file object: torch passes ENOSPC on as an OSError
            write(f)
    except (OSError, RuntimeError) as error:
        cause = error                    # torch's zip writer may raise a RuntimeError while closing after it
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__
        if cause is None:
            raise
        with contextlib.suppress(OSError):
            os.remove(tmp)
        kept = f'the previous {os.path.basename(path)} is intact' if os.path.isfile(path) else 'nothing was written'
        sys.exit(f'{path}: {(cause.strerror or str(cause)).lower()} while writing it; {kept}')
    os.replace(tmp, path)


def save_checkpoint(out_dir, model, optimizer, epoch, args, stage=None, **extra):
    """checkpoint.pth: what --resume needs (model, optimizer, epoch, args, RNG states, the stage that
    wrote it) and `extra`."""
    state = {'model': unwrap(model).state_dict(), 'optimizer': optimizer.state_dict(), 'epoch': epoch,
             'args': vars(args), 'rng': rng_state(), 'stage': stage, **extra}
    atomic_write(os.path.join(out_dir, 'checkpoint.pth'), partial(torch.save, state))


def read_torch_file(path, flag):
    """torch.load (weights only) of a --init or --resume file; anything but a dict is one clear line."""
    size = os.path.getsize(path)
    if size == 0:
        sys.exit(f'{flag} {path}: empty file (0 bytes), expected a torch checkpoint')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:
        sys.exit(f'{flag} {path}: not a readable torch checkpoint, truncated or another kind of file '
                 f'({size} bytes; torch.load: {type(error).__name__})')
    if not isinstance(state, dict):
        sys.exit(f'{flag} {path}: holds a {type(state).__name__}, expected a dict of weights')
    return state


def checkpoint_stage(state):
    """Which stage wrote a checkpoint.pth (older files carry no 'stage': told apart by their keys)."""
    if state.get('stage'):
        return state['stage']
    if 'step' in state:
        return 'pretrain'
    return 'probe' if 'momentum' in state.get('args', {}) else 'finetune'


def restore_checkpoint(path, model, optimizer, stage=None):
    """Load save_checkpoint's file into model and optimizer, restore the RNG; returns the whole state.

    A file that is not a checkpoint.pth, one of another stage (given `stage`) or of another
    architecture is refused with one line, before anything is loaded."""
    state = read_torch_file(path, '--resume')
    if not {'model', 'optimizer', 'epoch', 'args', 'rng'} <= set(state):
        sys.exit(f'--resume {path}: not a checkpoint.pth of these scripts (no model/optimizer/epoch); '
                 f'weights to start from go to --init')
    if stage and checkpoint_stage(state) != stage:
        sys.exit(f'--resume {path}: a {checkpoint_stage(state)} checkpoint; {stage}.py resumes only its own '
                 f'(weights to start from go to --init)')
    expected = unwrap(model).state_dict()
    wrong = [k for k in expected if k not in state['model'] or state['model'][k].shape != expected[k].shape]
    wrong += [k for k in state['model'] if k not in expected]
    if wrong:
        sys.exit(f"--resume {path}: written for another model or head ({len(wrong)} tensors differ, first "
                 f"'{wrong[0]}'; it was --model {state['args'].get('model')})")
    unwrap(model).load_state_dict(state['model'])
    fused = [group.get('fused') for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state['optimizer'])
    except ValueError as error:
        sys.exit(f'--resume {path}: its optimizer state does not fit this run ({error})')
    for group, value in zip(optimizer.param_groups, fused):    # this device decides, not the writer's
        group['fused'] = value
    set_rng_state(state['rng'])
    return state


def rng_state():
    state = {'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state):
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])


def resume_path(resume, out_dir):
    """--resume auto -> the output dir's checkpoint if one exists; a path must exist."""
    if resume is None:
        return None
    path = os.path.join(out_dir, 'checkpoint.pth') if resume == 'auto' else resume
    if os.path.isfile(path):
        return path
    if resume == 'auto':
        return None
    sys.exit(f'--resume {resume}: no such checkpoint')


def restart_log(path, start_epoch):
    """log.jsonl when a run starts: the epochs before `start_epoch` stay (a resumed run keeps its
    history and logs each later epoch once more, so once in all), a new run starts empty; a line cut
    short by a kill is dropped."""
    kept = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    if json.loads(line)['epoch'] < start_epoch:
                        kept.append(line if line.endswith('\n') else line + '\n')
                except (ValueError, KeyError, TypeError):
                    pass
    atomic_write(path, lambda f: f.writelines(kept), 'w')


def finish(start_epoch, last_epoch, log=print):
    """The end of every stage's run: say so if the checkpoint had done it all, leave the process group."""
    if start_epoch >= last_epoch:
        log(f'nothing to do: the checkpoint is at epoch {start_epoch} of {last_epoch}')
    cleanup_distributed()


def main_guard(main, get_args):
    """The scripts' entry point: an OS error (disk full, permissions) ends in one line naming the file.
    Under torchrun the process group is torn down after a barrier at the end, so that no rank closes its
    sockets while a peer may still be reading from them."""
    try:
        main(get_args())
        cleanup_distributed()
    except OSError as error:
        sys.exit(f'{error.filename or sys.argv[0]}: {(error.strerror or str(error)).lower()}')


def log_jsonl(path, record):
    with open(path, 'a') as f:
        f.write(json.dumps(record) + '\n')


# ----------------------------------------------------------------------------------------------
# Accuracy

def accuracy(logits, labels, ks=(1, 5)):
    """Top-k accuracy in percent for each k (k capped at the number of classes)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices      # (N, k)
    hits = top == labels[:, None]
    return {f'top{k}': hits[:, :k].any(1).float().mean().item() * 100 for k in ks}


def per_class_accuracy(predictions, labels, num_classes):
    """Accuracy in percent of each class (None for a class absent from the labels); their mean is
    result.json's mean_class_accuracy."""
    correct = torch.bincount(labels[predictions == labels], minlength=num_classes).tolist()
    total = torch.bincount(labels, minlength=num_classes).tolist()
    return [100 * c / t if t else None for c, t in zip(correct, total)]


# ----------------------------------------------------------------------------------------------
# The epochs of probe and finetune (MAE's engine): resume, train, evaluate, result files

def resume_classifier(args, out_dir, model, optimizer, stage, rank, log=print):
    """--resume of probe and finetune: (the first epoch to run, the best {'top1', 'epoch'} so far);
    rank 0's log.jsonl keeps the epochs before it. With --eval the checkpoint is only loaded, and
    args.epochs becomes its run's, so that result.json describes that run."""
    start_epoch, best = 0, {'top1': -1.0, 'epoch': -1}
    path = resume_path(args.resume, out_dir)
    if args.eval and not path:
        sys.exit(f'--eval: no checkpoint to score (--resume {args.resume}); give its path, e.g. --resume RUN/checkpoint.pth')
    if path:
        state = restore_checkpoint(path, model, optimizer, stage)
        start_epoch, best = state['epoch'] + 1, state['best']
        log(f'scoring {path} (epoch {start_epoch - 1})' if args.eval else f'resumed from {path} at epoch {start_epoch}')
        if args.eval:
            trained_on = state['args'].get('data')
            if trained_on != args.data:    # the same class count would be scored against another dataset's labels
                sys.exit(f'--eval: {path} was trained on --data {trained_on}; its classes are that dataset\'s, so it '
                         f'is scored on one of its protocols, not on --data {args.data}')
            args.epochs = state['args']['epochs']
    if rank == 0 and not args.eval:
        restart_log(os.path.join(out_dir, 'log.jsonl'), start_epoch)
    return start_epoch, best


def train_one_epoch(model, batches, step_loss, optimizer, epoch, steps_per_epoch, lr, args, device):
    """One epoch of probe or finetune: the model in train mode, each step sets the
    per-iteration lr, takes step_loss(it, batch) -> (loss, images in the global batch) and steps the
    optimizer; returns the epoch's log.jsonl record."""
    model.train()
    total_steps, warmup_steps = args.epochs * steps_per_epoch, args.warmup_epochs * steps_per_epoch
    epoch_start, loss_sum, seen = time.time(), torch.zeros((), device=device), 0
    shown = progress(batches, f'epoch {epoch}', steps_per_epoch, args.batch_size, args.print_every,
                     lambda: f'loss {loss.item():.4f} lr {current_lr(optimizer):.4g}',
                     run=(epoch * steps_per_epoch, args.epochs * steps_per_epoch))
    for step, batch in enumerate(shown):
        it = epoch * steps_per_epoch + step
        set_lr(optimizer, lr_at(it, total_steps, warmup_steps, lr, args.min_lr))
        loss, images = step_loss(it, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach()
        seen += images
    return epoch_record(epoch, loss_sum, step + 1, current_lr(optimizer), seen, epoch_start)


def epoch_record(epoch, loss_sum, steps, lr, images, epoch_start):
    """log.jsonl's line for a finished epoch of probe or fine-tuning. The loss's .item() waits for
    the GPU, so the time read after it covers every step queued in the epoch."""
    loss = all_reduce_mean(loss_sum / max(1, steps)).item()
    seconds = time.time() - epoch_start
    return {'epoch': epoch, 'loss': loss, 'lr': lr, 'time': seconds, 'images_per_s': images / seconds}


def end_epoch(out_dir, rank, record, model, optimizer, args, stage, last_epoch, best, curves):
    """Rank 0 after a probe/finetune epoch: its line in log.jsonl and, every --save-every epochs and at
    the run's last, checkpoint.pth (with the best top-1 so far) and curves.png (curves: title, chance)."""
    if rank != 0:
        return
    epoch = record['epoch']
    log_jsonl(os.path.join(out_dir, 'log.jsonl'), record)
    if (epoch + 1) % args.save_every == 0 or epoch + 1 == last_epoch:
        save_checkpoint(out_dir, model, optimizer, epoch, args, stage, best=best)
        pictures.save_curves(out_dir, *curves)


def evaluate(forward, loader, num_samples, device, mean, std, args, desc='test'):
    """forward(images) -> (B, K) for every test batch; returns (N, K) float32 in dataset order on all ranks."""
    outputs, positions = [], []
    world = dist.get_world_size() if dist.is_initialized() else 1
    with torch.no_grad():
        for batch in progress(loader, desc, len(loader), loader.batch_size * world):
            images, _, index = prepare_batch(batch, device, mean, std, args.modality, args)
            outputs.append(forward(images).float())
            positions.append(index)
    return gather_by_index(torch.cat(outputs), torch.cat(positions), num_samples)


def write_results(out_dir, rank, logits, labels, names, num_classes, record, best, args, settings):
    """Accuracy of (N, C) logits; rank 0 writes result.json, test_logits/labels/names, confusion.png.

    `record` (the epoch's log.jsonl line) gets its test_top1 and `best` ({'top1', 'epoch'}) is updated,
    both in place.
    """
    epoch = record['epoch']
    labels_t = torch.as_tensor(labels, device=logits.device)
    metrics = accuracy(logits, labels_t)
    predictions = logits.argmax(1)
    metrics['per_class'] = per_class_accuracy(predictions, labels_t, num_classes)
    present = [value for value in metrics['per_class'] if value is not None]
    metrics['mean_class_accuracy'] = sum(present) / len(present)   # Toyota Smarthome's metric (Das et al. 2019)
    if metrics['top1'] > best['top1']:
        best.update(top1=metrics['top1'], epoch=epoch)
    metrics.update(best_top1=best['top1'], best_epoch=best['epoch'], epoch=epoch, epochs=args.epochs,
                   data=args.data, protocol=args.protocol, modality=args.modality, model=args.model,
                   init=args.init, settings={**vars(args), **settings})
    if rank == 0:
        path = partial(os.path.join, out_dir)
        atomic_write(path('test_logits.npy'), lambda f: np.save(f, logits.cpu().numpy().astype(np.float32)))
        atomic_write(path('test_labels.npy'), lambda f: np.save(f, np.asarray(labels, dtype=np.int64)))
        atomic_write(path('test_names.txt'), lambda f: f.write(''.join(f'{name}\n' for name in names)), 'w')
        run = os.path.basename(os.path.normpath(out_dir))
        pictures.save_confusion(path('confusion.png'), predictions.cpu().numpy(), np.asarray(labels), num_classes,
                                settings.get('class_names'), f'{run}: top-1 {metrics["top1"]:.1f}% at epoch {epoch} '
                                f'({len(labels)} test samples, chance {100 / num_classes:.1f}%)')
        atomic_write(path('result.json'), lambda f: json.dump(metrics, f, indent=2), 'w')
        print(f'epoch {epoch}: test top1 {metrics["top1"]:.2f} top5 {metrics["top5"]:.2f} '
              f'mean class {metrics["mean_class_accuracy"]:.2f} '
              f'(best {best["top1"]:.2f} at {best["epoch"]})')
    record['test_top1'] = metrics['top1']
    return metrics


# ----------------------------------------------------------------------------------------------
# Progress: a bar on a terminal, a line every --print-every steps or 30 s in a log

_last_line = [time.time()]          # when a progress line was last printed, across all loops of the run


def progress(iterable, desc, steps, batch_size=1, print_every=0, status=None, run=None, seconds=30):
    """Yield from `iterable` (one item per step) and show how far it is, on rank 0 only.

    stderr on a terminal: a tqdm bar with images/s and time left. Otherwise (a log): a line on
    stderr every `print_every` steps and at least every `seconds`. status() (e.g. the loss) is
    called only when a line is shown, so a GPU loop syncs only then. run = (steps done before this
    loop, steps in the whole run) makes the time left the run's instead of this loop's.
    """
    if dist.is_initialized() and dist.get_rank() != 0:
        yield from iterable
        return
    done, total = run if run else (0, steps)
    if sys.stderr.isatty():
        from tqdm import tqdm
        with tqdm(total=total, initial=done, desc=desc, unit='img', unit_scale=batch_size, leave=False,
                  file=sys.stderr, dynamic_ncols=True, mininterval=1.0) as bar:
            for step, item in enumerate(iterable, 1):
                yield item
                bar.update(1)
                if status and print_every and step % print_every == 0:
                    bar.set_postfix_str(status(), refresh=False)
        return
    start = time.time()
    for step, item in enumerate(iterable, 1):
        yield item
        now = time.time()
        if (print_every and step % print_every == 0) or now - _last_line[0] >= seconds:
            rate = step / max(now - start, 1e-9)                                  # steps per second
            text = status() if status else ''
            shown = f' {text}' if text else ''
            print(f'{desc} step {step}/{steps}{shown} {rate * batch_size:.1f} img/s, '
                  f'{format_duration((total - done - step) / rate)} left', file=sys.stderr, flush=True)
            _last_line[0] = now


def format_duration(seconds):
    """12s, 3m05s, 2h07m."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f'{seconds}s'
    if seconds < 3600:
        return f'{seconds // 60}m{seconds % 60:02d}s'
    return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'
