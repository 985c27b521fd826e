"""Fine-tuning an S2I encoder end to end (paper Sec. 4.2, 4.4, 4.5, A.3, Table 12).

    python finetune.py --data ntu60 --init runs/pretrain/ntu60_xsub_joint_diffmae/encoder.pth      # Table 5
    python finetune.py --data ntu60 --init ENCODER.pth --label-fraction 0.01                      # Table 6
    python finetune.py --data pku2 --init runs/pretrain/ntu60_xsub_joint_diffmae/encoder.pth     # Table 7
    python finetune.py --data ucla --init runs/pretrain/ntu60_xsub_joint_diffmae/encoder.pth     # Table 8
    python finetune.py --data ntu120 --protocol oneshot --init ENCODER.pth                      # MotionBERT A.1
    torchrun --nproc_per_node 8 finetune.py ...

Protocols:
- full fine-tuning (Table 5): --init is any encoder.pth, the official MAE checkpoint, 'imagenet'
  (timm hub) or 'none' (from scratch); the model is a timm ViT with a head on the class token.
- semi-supervised (Table 6): --label-fraction 0.01 / 0.1 keeps that fraction of every class of the
  train split (at least one sample each), chosen by --seed alone; the names go to train_subset.txt.
- transfer (Table 7) and cross-format (Table 8): only --init (the source run) and --data (the
  target) change; nothing here depends on the source dataset or its skeleton format.
- one-shot (--protocol oneshot, MotionBERT Sec. 4.4 / A.1, NTU-120): the encoded
  --oneshot-source protocol (both splits) is split by label into 100 auxiliary classes, trained
  with a supervised contrastive loss on normalised class-token embeddings, and 20 novel classes
  (A1, A7, ..., A115) recognised by 1-nearest-neighbour cosine similarity to one exemplar each
  (the official exemplar samples S001C003P008R001Axxx / S018C003P008R001Axxx).

Learning rate: --lr is the absolute learning rate at the global batch size (4.2: "an initial
learning rate of 0.001"); --blr instead gives lr = blr * batch / 256 (MAE convention).
Head: --head linear (default: A.3, "standard supervised ViT", a linear layer on the class token, as
in MAE/BEiT fine-tuning) or --head mlp (4.4 says "an MLP head": Linear-GELU-Linear).
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.distributed.nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import common

# NTU-120 one-shot protocol (Liu et al. 2020; MotionBERT A.1): novel actions A1, A7, ..., A115.
ONESHOT_NOVEL_ACTIONS = list(range(1, 121, 6))


def get_args(argv=None):
    parser = argparse.ArgumentParser(description='Fine-tuning of an S2I encoder (Table 12)')
    common.add_data_args(parser, batch_size=None, epochs=100)           # Table 12: 100 epochs
    common.add_run_args(parser, stage='finetune')
    group = parser.add_argument_group('optimisation (Table 12)')
    group.add_argument('--lr', type=float, default=1e-3,                # Table 12 / 4.2: 1e-3
                       help='absolute learning rate at the global batch size')
    group.add_argument('--blr', type=float, default=None,
                       help='base learning rate instead of --lr: lr = blr * batch / 256 (MAE convention)')
    group.add_argument('--weight-decay', type=float, default=0.05)      # Table 12: 0.05
    group.add_argument('--layer-decay', type=float, default=0.75)       # Table 12: 0.75 (BEiT)
    group.add_argument('--warmup-epochs', type=int, default=10)         # Table 12: 10
    group.add_argument('--min-lr', type=float, default=1e-6)            # MAE fine-tuning's floor
    group.add_argument('--drop-path', type=float, default=0.1)          # MAE ViT-B fine-tuning
    group.add_argument('--head', default='linear', choices=['linear', 'mlp'],
                       help='linear: standard ViT head on the class token (A.3); mlp: Linear-GELU-Linear (4.4)')
    group.add_argument('--pool', default='cls', choices=['cls', 'mean'],   # 4.2: the class token
                       help='the head reads the class token, or the mean of the patch tokens (MAE fine-tuning\'s default)')
    group = parser.add_argument_group('protocols')
    group.add_argument('--label-fraction', type=float, default=None,
                       help='semi-supervised (Table 6): keep this fraction of each class of the train split')
    group.add_argument('--oneshot-source', default='xsub',
                       help='--protocol oneshot: the encoded protocol whose train+test samples are used')
    group.add_argument('--novel-actions', default=','.join(map(str, ONESHOT_NOVEL_ACTIONS)),
                       help='--protocol oneshot: 1-based action ids of the novel classes (A1, A7, ..., A115)')
    group.add_argument('--temperature', type=float, default=0.1,        # MotionBERT A.1: 0.1
                       help='--protocol oneshot: supervised contrastive loss temperature')
    group.add_argument('--embed-dim', type=int, default=0,
                       help='--protocol oneshot: 0 = the class token is the embedding; '
                            'N = a linear layer to N dims on top (MotionBERT: 2048)')
    group = parser.add_argument_group('evaluation')
    group.add_argument('--eval-every', type=int, default=10, help='epochs between test evaluations (and at the end)')
    group.add_argument('--print-every', type=int, default=50, help='iterations between progress lines')
    common.add_augment_args(parser)
    args = parser.parse_args(argv)
    if args.batch_size is None:                                         # Table 12: 128, 32 for NW-UCLA
        args.batch_size = 32 if args.data == 'ucla' else 128
    if args.eval and args.init is None:   # the weights come from the --resume checkpoint
        args.init = 'none'
    if args.init is None:
        sys.exit('finetune.py needs --init: the pretrain run\'s encoder.pth '
                 '(e.g. runs/pretrain/ntu60_xsub_joint_diffmae/encoder.pth), an MAE checkpoint, imagenet, '
                 'or none (from scratch)')
    if args.protocol == 'oneshot' and args.batch_size % 2:
        sys.exit(f'--protocol oneshot: --batch-size {args.batch_size} must be even (batches of same-class pairs)')
    if args.label_fraction is not None and not 0 < args.label_fraction <= 1:
        sys.exit(f'--label-fraction {args.label_fraction}: expected a fraction in (0, 1], e.g. 0.01 or 0.1')
    common.check_args(args)
    return args


def main(args):
    rank, world, device = common.init_distributed(args.device)
    say = print if rank == 0 else (lambda *a, **k: None)
    oneshot = args.protocol == 'oneshot'
    if not oneshot:
        args.protocol = common.resolve_protocol(args.data_root, args.data, args.protocol)
    method = 'oneshot' if oneshot else f'frac{args.label_fraction:g}' if args.label_fraction else 'full'
    out_dir = common.output_dir(args, 'finetune', method)
    if rank == 0:
        common.make_output_dir(out_dir)
    if args.batch_size % (2 * world if oneshot else world):
        sys.exit(f'--batch-size {args.batch_size} must divide over {world} processes' + (' in pairs' if oneshot else ''))
    batch_per_rank = args.batch_size // world
    lr = args.blr * args.batch_size / 256 if args.blr is not None else args.lr

    # ---- data
    source = args.oneshot_source if oneshot else args.protocol
    meta = common.load_meta(args.data_root, args.data, source)
    mean, std = common.channel_stats(meta, args.modality, device)
    geometry = None if args.eval else common.skeleton_geometry([meta], args, device)   # 2D or 3D, the mirror flip
    train_path, train_labels, train_names = common.read_split(args.data_root, args.data, source, 'train', args.modality)
    test_path, test_labels, test_names = common.read_split(args.data_root, args.data, source, 'test', args.modality)
    if oneshot:
        # Both splits, split by class: auxiliary samples train, novel samples are queried against exemplars.
        novel = oneshot_classes(args.novel_actions, meta['num_classes'])
        labels = np.concatenate([train_labels, test_labels])                        # (N,)
        names = train_names + test_names
        is_novel = np.isin(labels, novel)
        exemplars, exemplar_source = oneshot_exemplars(labels, names, novel)
        queries = np.setdiff1d(np.flatnonzero(is_novel), exemplars)                 # (Q,) sorted
        train_set = common.S2IDataset([train_path, test_path], [train_labels, test_labels], subset=np.flatnonzero(~is_novel))
        test_set = common.S2IDataset([train_path, test_path], [train_labels, test_labels], subset=np.concatenate([exemplars, queries]))
        test_labels = np.searchsorted(novel, labels[queries])                       # index into the novel classes
        test_names = [names[i] for i in queries]
        num_classes = len(novel)
        say(f'one-shot: {len(train_set)} auxiliary samples of {meta["num_classes"] - len(novel)} classes, '
            f'{len(queries)} queries of {len(novel)} novel classes, exemplars: {exemplar_source}')
    else:
        num_classes = meta['num_classes']
        subset = None
        if args.label_fraction:
            subset = label_subset(train_labels, args.label_fraction, args.seed)
            if rank == 0:
                common.atomic_write(os.path.join(out_dir, 'train_subset.txt'),
                                    lambda f: f.write(''.join(f'{train_names[i]}\n' for i in subset)), 'w')
            say(f'semi-supervised: {len(subset)} of {len(train_labels)} train samples ({args.label_fraction:g} per class)')
        train_set = common.S2IDataset([train_path], [train_labels], subset=subset)
        test_set = common.S2IDataset([test_path], [test_labels])
    train_loader, train_sampler = common.make_loader(train_set, batch_per_rank, True, args.num_workers, args.seed, device)
    test_loader, _ = common.make_loader(test_set, batch_per_rank, False, args.num_workers, args.seed, device)
    common.warn_if_batch_exceeds(args.batch_size, len(train_set), rank)

    # ---- model: timm ViT, head on the class token (or an embedding for one-shot), layer-wise lr decay
    torch.manual_seed(args.seed)
    model = build_model(args, meta['size'], 0 if oneshot else num_classes)
    common.load_encoder_weights(model, args.init, args.model, log=say)
    drop_path_over_global_batch(model, rank, world)
    model.to(device)
    groups = common.param_groups(model, args.weight_decay, lambda name: layer_scale(name, len(model.blocks), args.layer_decay))
    optimizer = common.adamw(groups, device, lr=lr)
    forward = torch.compile(model) if args.compile else model
    forward = DistributedDataParallel(forward) if world > 1 else forward
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=common.use_bf16(args, device))

    # ---- resume
    start_epoch, best = common.resume_classifier(args, out_dir, model, optimizer, 'finetune', rank, say)

    # ---- loop: the loss of one step here; the epoch (common.train_one_epoch), evaluation and result files
    def step_loss(it, batch):
        """Step `it`'s loss on this rank's rows of the global batch, whose augmentation and drop path are
        drawn from a seed of (--seed, it) alone: a resumed run repeats the uninterrupted one exactly, N
        processes repeat one."""
        with common.seeded(common.step_seed(args.seed, it), device):
            images, labels = common.global_train_batch(batch, rank, world, device, mean, std, args.modality,
                                                       args, geometry)
            with torch.autocast(**amp):
                outputs = forward(images)                                # (B, C) logits or (B, D) embeddings
        if oneshot:
            loss = supcon_loss(*gather_global(F.normalize(outputs.float(), dim=1), labels), args.temperature)
        else:
            loss = F.cross_entropy(outputs.float(), labels)
        return loss, len(labels) * world                                 # and the images of the global batch

    def evaluate_and_write(record):
        """The test split's scores of the model as it is now, into result.json, the logits and confusion.png."""
        model.eval()
        with torch.autocast(**amp):
            outputs = common.evaluate(model, test_loader, len(test_set), device, mean, std, args)
        settings = {'lr': lr, 'method': method, 'world_size': world, 'num_classes': num_classes,
                    'class_names': class_names(meta, novel if oneshot else range(num_classes))}
        if oneshot:
            embeddings = F.normalize(outputs, dim=1)
            exemplar_emb, query_emb = embeddings[:num_classes], embeddings[num_classes:]
            _, logits = one_shot_nn(query_emb, exemplar_emb, torch.arange(num_classes, device=device))
            settings.update(novel_actions=[int(c) + 1 for c in novel], exemplars=[names[i] for i in exemplars],
                            exemplar_source=exemplar_source)
        else:
            logits = outputs                                             # (N, C)
        return common.write_results(out_dir, rank, logits, test_labels, test_names, num_classes, record, best, args, settings)

    if args.eval:   # MAE's --eval: the checkpoint's scores, no training
        return evaluate_and_write({'epoch': start_epoch - 1})
    steps_per_epoch = len(train_loader) if not oneshot else len(pair_order(train_set.labels[train_set.subset], args.seed, 0, rank, world, batch_per_rank)) // batch_per_rank
    say(f'finetune {args.data}/{args.protocol}/{args.modality} ({method}): {len(train_set)} train, '
        f'{len(test_labels)} test, {num_classes} classes, lr {lr:g}, batch {args.batch_size} ({world} x {batch_per_rank}), {out_dir}')
    metrics = None
    last_epoch = args.epochs if args.stop_after is None else min(args.epochs, args.stop_after)
    for epoch in range(start_epoch, last_epoch):
        if oneshot:   # batches of same-class pairs, so every anchor has a positive (MotionBERT A.1)
            order = pair_order(train_set.labels[train_set.subset], args.seed, epoch, rank, world, batch_per_rank)
            batches = torch.utils.data.DataLoader(train_set, batch_size=batch_per_rank, sampler=order, drop_last=True,
                                                  num_workers=args.num_workers, collate_fn=common.keep_batch)
        else:
            train_sampler.set_epoch(epoch)
            batches = train_loader
        record = common.train_one_epoch(model, batches, step_loss, optimizer, epoch, steps_per_epoch, lr, args, device)
        if (epoch + 1) % args.eval_every == 0 or epoch == args.epochs - 1:
            metrics = evaluate_and_write(record)
        common.end_epoch(out_dir, rank, record, model, optimizer, args, 'finetune', last_epoch, best,
                         (f'fine-tuning ({method}), {args.data}/{args.protocol}/{args.modality}', 100 / num_classes))
    common.finish(start_epoch, last_epoch, say)
    return metrics


def class_names(meta, labels):
    """Names of these encoded labels for confusion.png: meta.json's class_names, else 'class k'."""
    names = meta.get('class_names')
    return [names[k] if names else f'class {k}' for k in labels]


def build_model(args, img_size, num_classes):
    """timm ViT with drop path; head: linear (A.3) or MLP (4.4) on the class token, or the one-shot embedding."""
    if num_classes == 0:   # one-shot: class token, optionally projected (MotionBERT's 2048-d linear layer)
        return common.build_encoder(args.model, img_size, args.embed_dim, args.drop_path, args.pool)
    model = common.build_encoder(args.model, img_size, num_classes, args.drop_path, args.pool)
    if args.head == 'mlp':
        dim = model.embed_dim
        model.head = torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.GELU(), torch.nn.Linear(dim, num_classes))
    for module in model.head.modules():   # MAE fine-tuning: small head initialisation
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.trunc_normal_(module.weight, std=2e-5 if args.head == 'linear' else 0.02)
            torch.nn.init.zeros_(module.bias)
    return model


def drop_path_over_global_batch(model, rank, world):
    """Drop path (stochastic depth) drawn for the global batch, each rank keeping its rows r::world
    as the augmentation does (timm's DropPath draws for the rank's rows alone, so N processes would
    drop other paths than one). Each DropPath is switched off and a forward hook applies timm's rule
    instead: keep a sample's residual branch with probability 1 - p, scaled by 1 / (1 - p)."""
    from timm.layers import DropPath

    def hook(module, inputs, output, keep, scale):
        if not module.training:
            return output
        n = output.shape[0]
        kept = (torch.rand(world * n, device=output.device) < keep)[rank::world].to(output.dtype)   # (n,)
        return output * (kept / keep if scale else kept).view(n, *(1,) * (output.ndim - 1))

    for module in model.modules():
        if isinstance(module, DropPath) and module.drop_prob > 0:
            keep, module.drop_prob = 1 - module.drop_prob, 0.0
            module.register_forward_hook(lambda m, i, o, keep=keep, scale=module.scale_by_keep: hook(m, i, o, keep, scale))


def layer_scale(name, depth, decay):
    """BEiT/MAE layer-wise lr decay: embeddings are layer 0, blocks.i layer i+1, the rest (norm,
    head) layer depth+1; the multiplier is decay ** (depth + 1 - layer)."""
    if name.startswith(('cls_token', 'pos_embed', 'patch_embed', 'reg_token')):
        layer = 0
    elif name.startswith('blocks.'):
        layer = int(name.split('.')[1]) + 1
    else:
        layer = depth + 1
    return decay ** (depth + 1 - layer)


def label_subset(labels, fraction, seed):
    """Sorted indices of a seeded per-class sample: round(fraction * n_c), at least 1, of every class.

    Depends only on (labels, fraction, seed), so every rank computes the same subset.
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        keep = max(1, int(round(fraction * len(members))))
        chosen.append(rng.permutation(members)[:keep])
    return np.sort(np.concatenate(chosen))


# ----------------------------------------------------------------------------------------------
# One-shot recognition (MotionBERT Sec. 4.4 / A.1, the NTU-120 one-shot protocol)

def oneshot_classes(novel_actions, num_classes):
    """0-based labels of the novel classes (action ids are 1-based); ids past num_classes are dropped."""
    novel = sorted(int(a) - 1 for a in novel_actions.split(',') if 0 < int(a) <= num_classes)
    if not novel or len(novel) == num_classes:
        sys.exit(f'--novel-actions {novel_actions}: need at least one novel and one auxiliary class of {num_classes}')
    return np.array(novel, dtype=np.int64)


def oneshot_exemplars(labels, names, novel):
    """Index of one exemplar per novel class, in novel order, and where they came from.

    The official exemplars (NTU-120 README) are S001C003P008R001Axxx for A1..A55 and
    S018C003P008R001Axxx for A61..A115; a class whose official exemplar is not in the encoded
    data (another dataset, a skipped sample) takes its first sample by sorted name instead.
    """
    by_name = {name: i for i, name in enumerate(names)}
    chosen, official = [], 0
    for c in novel:
        name = f'S{1 if c < 60 else 18:03d}C003P008R001A{c + 1:03d}'
        if name in by_name and labels[by_name[name]] == c:
            chosen.append(by_name[name])
            official += 1
        else:
            members = np.flatnonzero(labels == c)
            if len(members) < 2:
                sys.exit(f'one-shot: novel class {c} has {len(members)} samples; it needs an exemplar and a query')
            chosen.append(min(members, key=lambda i: names[i]))
    source = 'official' if official == len(novel) else f'{official} official, {len(novel) - official} first by sorted name'
    return np.array(chosen, dtype=np.int64), source


def supcon_loss(embeddings, labels, temperature):
    """Supervised contrastive loss (Khosla et al. 2020) on L2-normalised embeddings (B, D).

    For each anchor, the mean over its positives of -log softmax over all other samples; anchors
    without a positive in the batch are left out.
    """
    logits = embeddings @ embeddings.T / temperature                             # (B, B)
    self_mask = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    logits = logits.masked_fill(self_mask, float('-inf'))
    log_prob = logits - logits.logsumexp(1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask                  # (B, B)
    count = positives.sum(1)
    per_anchor = -log_prob.masked_fill(~positives, 0).sum(1) / count.clamp_min(1)
    return per_anchor[count > 0].mean()


def one_shot_nn(queries, exemplars, exemplar_labels):
    """1-nearest-neighbour by cosine similarity: queries (Q, D), exemplars (K, D) -> (predictions (Q,), similarity (Q, K))."""
    similarity = F.normalize(queries, dim=1) @ F.normalize(exemplars, dim=1).T   # (Q, K)
    return exemplar_labels[similarity.argmax(1)], similarity


def pair_order(labels, seed, epoch, rank, world, batch_per_rank):
    """This rank's sample positions for one epoch, in same-class pairs (MotionBERT: batches of pairs).

    Every class is shuffled and cut into pairs, the pairs are shuffled and cut into whole global
    batches of world * batch_per_rank samples, and this rank takes rows rank::world of each (as
    common.global_train_batch deals them), so the global batches do not depend on the world size.
    """
    rng = np.random.default_rng([seed, epoch])
    pairs = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        pairs += [members[i:i + 2] for i in range(0, len(members) - 1, 2)]
    pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    global_batch = world * batch_per_rank
    order = np.array([int(i) for pair in pairs for i in pair][:len(pairs) * 2 // global_batch * global_batch])
    if len(order) == 0:
        sys.exit(f'one-shot: {len(pairs)} same-class pairs cannot fill one batch of {global_batch} samples')
    return order.reshape(-1, global_batch)[:, rank::world].reshape(-1).tolist()


def gather_global(embeddings, labels):
    """This rank's rows (b, D), (b,) -> the global batch's (world * b, D), (world * b,) in global row
    order (rank r held rows r::world). The embeddings keep their gradient (torch.distributed.nn), so
    every rank computes the same loss over the global batch; the gather's backward sums the world
    copies of it into each rank's rows and DDP's average then gives the one-process gradient."""
    if not torch.distributed.is_initialized():
        return embeddings, labels
    world = torch.distributed.get_world_size()
    every_label = [torch.empty_like(labels) for _ in range(world)]
    torch.distributed.all_gather(every_label, labels)
    stacked = torch.stack(torch.distributed.nn.all_gather(embeddings), dim=1)    # (b, world, D)
    return stacked.reshape(-1, embeddings.shape[-1]), torch.stack(every_label, dim=1).reshape(-1)


if __name__ == '__main__':
    common.main_guard(main, get_args)
