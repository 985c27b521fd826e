"""Linear probing of a frozen S2I encoder (paper Sec. 4.2, A.3, Table 13).

    python probe.py --data ntu60 --protocol xsub --init runs/pretrain/ntu60_xsub_joint_diffmae/encoder.pth
    torchrun --nproc_per_node 8 probe.py --data ntu60 --init ENCODER.pth
    python probe.py --data ntu60 --init ENCODER.pth --cache-features     # fast variant, no augmentation

The encoder is frozen (eval mode, no gradients); its class token after the final norm is the
feature (4.2; --pool mean: the mean of the patch tokens instead). The head is BatchNorm without affine parameters followed by a linear layer (MAE's
linear-probe head), trained with SGD + Nesterov momentum, warmup then per-iteration cosine.

Learning rate: --lr is the absolute learning rate at the global batch size (4.2: "an initial
learning rate of 0.2" at batch 128). --blr instead scales with the batch: lr = blr * batch / 256.

Run directory (README.md, "What a run writes"): checkpoint.pth, log.jsonl, result.json, test_logits.npy, test_labels.npy,
test_names.txt, confusion.png, curves.png; the epoch loop, the evaluation in dataset order and the
result files are common.py's, shared with finetune.py, and the pictures pictures.py's.
"""
import argparse
import sys
import time

import torch
import torch.nn.functional as F

import common


def get_args(argv=None):
    parser = argparse.ArgumentParser(description='Linear probing of a frozen S2I encoder (Table 13)')
    common.add_data_args(parser, batch_size=128, epochs=100)             # Table 13: batch 128, 100 epochs
    common.add_run_args(parser, stage='probe')
    group = parser.add_argument_group('optimisation (Table 13)')
    group.add_argument('--lr', type=float, default=0.2,                  # Table 13 / 4.2: 0.2
                       help='absolute learning rate at the global batch size')
    group.add_argument('--blr', type=float, default=None,
                       help='base learning rate instead of --lr: lr = blr * batch / 256 (MAE convention)')
    group.add_argument('--momentum', type=float, default=0.9)            # Table 13: 0.9, Nesterov (4.2)
    group.add_argument('--weight-decay', type=float, default=0.0)        # Table 13: 0
    group.add_argument('--warmup-epochs', type=int, default=10)          # Table 13: 10
    group.add_argument('--min-lr', type=float, default=0.0)
    group.add_argument('--pool', default='cls', choices=['cls', 'mean'],   # 4.2: the class token
                       help='the feature: the class token, or the mean of the patch tokens')
    group = parser.add_argument_group('evaluation and speed')
    group.add_argument('--eval-every', type=int, default=10, help='epochs between test evaluations (and at the end)')
    group.add_argument('--print-every', type=int, default=50, help='iterations between progress lines')
    group.add_argument('--cache-features', action='store_true',
                       help='extract un-augmented train/test features once and train the head on them '
                            '(much faster; drops the augmentation of Table 13)')
    common.add_augment_args(parser)
    args = parser.parse_args(argv)
    if args.init is None:
        sys.exit('probe.py needs --init: the pretrain run\'s encoder.pth '
                 '(e.g. runs/pretrain/ntu60_xsub_joint_diffmae/encoder.pth), or imagenet / none')
    common.check_args(args)
    return args


def main(args):
    rank, world, device = common.init_distributed(args.device)
    say = print if rank == 0 else (lambda *a, **k: None)
    args.protocol = common.resolve_protocol(args.data_root, args.data, args.protocol)
    method = 'cached' if args.cache_features else 'linear'
    out_dir = common.output_dir(args, 'probe', method)
    if rank == 0:
        common.make_output_dir(out_dir)
    if args.batch_size % world:
        sys.exit(f'--batch-size {args.batch_size} must divide over {world} processes')
    batch_per_rank = args.batch_size // world
    lr = args.blr * args.batch_size / 256 if args.blr is not None else args.lr

    # ---- data
    meta = common.load_meta(args.data_root, args.data, args.protocol)
    num_classes = meta['num_classes']
    mean, std = common.channel_stats(meta, args.modality, device)
    geometry = None if args.cache_features or args.eval else common.skeleton_geometry([meta], args, device)  # augment
    train_path, train_labels, _ = common.read_split(args.data_root, args.data, args.protocol, 'train', args.modality)
    test_path, test_labels, test_names = common.read_split(args.data_root, args.data, args.protocol, 'test', args.modality)
    train_set = common.S2IDataset([train_path], [train_labels])
    test_set = common.S2IDataset([test_path], [test_labels])
    common.warn_if_batch_exceeds(args.batch_size, len(train_set), rank)
    train_loader, train_sampler = common.make_loader(train_set, batch_per_rank, True, args.num_workers, args.seed, device)
    test_loader, _ = common.make_loader(test_set, batch_per_rank, False, args.num_workers, args.seed, device)

    # ---- model: frozen encoder + BatchNorm (no affine) + Linear head on the class token. Every rank
    # trains the same head on the whole global batch's features (gathered), so the BatchNorm sees
    # global-batch statistics (as MAE's SyncBatchNorm) and the heads stay equal without DDP.
    torch.manual_seed(args.seed)
    encoder = common.build_encoder(args.model, img_size=meta['size'], pool=args.pool)
    common.load_encoder_weights(encoder, args.init, args.model, log=say)
    encoder.to(device).eval()
    for p in encoder.parameters():
        p.requires_grad = False
    head = make_probe_head(encoder.embed_dim, num_classes).to(device)
    features_of = torch.compile(encoder) if args.compile else encoder
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=args.momentum, nesterov=True,
                                weight_decay=args.weight_decay)
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=common.use_bf16(args, device))

    def extract(images):
        """(N, 3, S, S) -> (N, D) pooled features of the frozen encoder."""
        with torch.no_grad(), torch.autocast(**amp):
            return features_of(images).float()

    # ---- optional feature cache: one pass over train and test, un-augmented, in dataset order
    cache = None
    if args.cache_features:
        start = time.time()
        cache = {'test': extract_all(extract, test_set, batch_per_rank, args, device, mean, std, 'test features')}
        if not args.eval:
            cache['train'] = extract_all(extract, train_set, batch_per_rank, args, device, mean, std, 'train features')
        cache['train_labels'] = torch.from_numpy(train_labels).to(device)
        shapes = ', '.join(f'{split} {tuple(cache[split].shape)}' for split in ('train', 'test') if split in cache)
        say(f'cached features: {shapes} in {time.time() - start:.1f}s')
        steps_per_epoch = len(train_labels) // args.batch_size or 1
    else:
        steps_per_epoch = len(train_loader)

    # ---- resume
    start_epoch, best = common.resume_classifier(args, out_dir, head, optimizer, 'probe', rank, say)

    # ---- loop: the loss of one step here; the epoch (common.train_one_epoch), evaluation and result files
    def step_loss(it, batch):
        """Step `it`'s loss on the global batch's features: the augmentation is drawn from a seed of
        (--seed, it) alone (resume-exact), or the cached features are taken as they are."""
        if cache is None:
            with common.seeded(common.step_seed(args.seed, it), device):
                images, labels = common.global_train_batch(batch, rank, world, device, mean, std, args.modality,
                                                           args, geometry)
            features, labels = gather_rows(extract(images)), gather_rows(labels)   # (B, D), (B,): global batch
        else:
            features, labels = batch
        return F.cross_entropy(head(features), labels), len(labels)

    def evaluate_and_write(record):
        """The test split's scores of the head as it is now, into result.json, the logits and confusion.png."""
        head.eval()
        if cache is None:
            logits = common.evaluate(lambda x: head(extract(x)), test_loader, len(test_labels), device, mean, std, args)
        else:
            with torch.no_grad():
                logits = head(cache['test']).float()                       # (N, C)
        return common.write_results(out_dir, rank, logits, test_labels, test_names, num_classes, record, best, args,
                                    settings={'lr': lr, 'method': method, 'world_size': world, 'num_classes': num_classes,
                                              'class_names': meta.get('class_names')})

    if args.eval:   # MAE's --eval: the checkpoint's scores (with the --init encoder it was trained on), no training
        return evaluate_and_write({'epoch': start_epoch - 1})
    say(f'probe {args.data}/{args.protocol}/{args.modality}: {len(train_labels)} train, {len(test_labels)} test, '
        f'{num_classes} classes, lr {lr:g}, batch {args.batch_size} ({world} x {batch_per_rank}), {out_dir}')
    metrics = None
    last_epoch = args.epochs if args.stop_after is None else min(args.epochs, args.stop_after)
    for epoch in range(start_epoch, last_epoch):
        if cache is None:
            train_sampler.set_epoch(epoch)
            batches = train_loader
        else:
            batches = cached_batches(cache, epoch, args.seed, args.batch_size, steps_per_epoch)
        record = common.train_one_epoch(head, batches, step_loss, optimizer, epoch, steps_per_epoch, lr, args, device)
        if (epoch + 1) % args.eval_every == 0 or epoch == args.epochs - 1:
            metrics = evaluate_and_write(record)
        common.end_epoch(out_dir, rank, record, head, optimizer, args, 'probe', last_epoch, best,
                         (f'linear probe, {args.data}/{args.protocol}/{args.modality}', 100 / num_classes))
    common.finish(start_epoch, last_epoch, say)
    return metrics


def make_probe_head(dim, num_classes):
    """MAE's linear-probe head: BatchNorm without affine (feature whitening) + Linear (std 0.01)."""
    head = torch.nn.Sequential(torch.nn.BatchNorm1d(dim, affine=False, eps=1e-6), torch.nn.Linear(dim, num_classes))
    torch.nn.init.trunc_normal_(head[1].weight, std=0.01)
    torch.nn.init.zeros_(head[1].bias)
    return head


def extract_all(extract, dataset, batch_per_rank, args, device, mean, std, desc='features'):
    """Un-augmented features (N, D) of a whole dataset, in dataset order, on every rank."""
    loader, _ = common.make_loader(dataset, batch_per_rank, False, args.num_workers, args.seed, device)
    return common.evaluate(extract, loader, len(dataset), device, mean, std, args, desc)


def cached_batches(cache, epoch, seed, batch_size, steps):
    """The global (features, labels) batches of one epoch, a shuffle seeded by (seed, epoch): every
    rank holds all cached features, so every rank takes the same global batch."""
    generator = torch.Generator().manual_seed(seed * 100003 + epoch)
    order = torch.randperm(len(cache['train']), generator=generator).to(cache['train'].device)
    for step in range(steps):
        index = order[step * batch_size:(step + 1) * batch_size]
        yield cache['train'][index], cache['train_labels'][index]


def gather_rows(values):
    """The global batch (world * n, ...) on every rank from each rank's n rows (rank r's at rows r::world)."""
    if not torch.distributed.is_initialized():
        return values
    parts = [torch.empty_like(values) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, values.contiguous())
    return torch.stack(parts, 1).flatten(0, 1)


if __name__ == '__main__':
    common.main_guard(main, get_args)
