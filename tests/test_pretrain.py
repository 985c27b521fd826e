"""pretrain.py: masks, diffusion schedule, learning, checkpoints, exact resume, DDP equality, weight loading."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from timm.models.vision_transformer import VisionTransformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import common
import pretrain
from fixtures import stage_args, write_encoded

torch.set_num_threads(1)
CPU = torch.device('cpu')
SIZE = 64          # vit_test on a 4x4 patch grid


@pytest.fixture()
def data(tmp_path):
    write_encoded(str(tmp_path / 'data'), size=SIZE)          # 64 train images, 4 classes
    return tmp_path


def tiny_args(tmp_path, *extra):
    """The tiny pretraining run of these tests on tmp_path/data: vit_test, a 2-block decoder of width 32."""
    return stage_args(tmp_path / 'data', '--init', 'none', '--batch-size', '16', '--decoder-dim', '32', '--decoder-depth', '2',
                      '--decoder-heads', '2', '--warmup-epochs', '1', *extra)


def run_args(tmp_path, *extra, out='run'):
    return pretrain.get_args(tiny_args(tmp_path, '--output-dir', str(tmp_path / out), '--print-every', '0', *extra))


def read_log(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def components(mask):
    """4-connected components of a (g, g) bool array."""
    seen, count = np.zeros_like(mask), 0
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        count += 1
        stack = [start]
        seen[start] = True
        while stack:
            r, c = stack.pop()
            for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= nr < mask.shape[0] and 0 <= nc < mask.shape[1] and mask[nr, nc] and not seen[nr, nc]:
                    seen[nr, nc] = True
                    stack.append((nr, nc))
    return count


# ----------------------------------------------------------------------------------------------
# Masks

@pytest.mark.parametrize('grid', [4, 14])
def test_mask_counts_and_structure(grid):
    n, length = 32, grid * grid
    torch.manual_seed(0)
    masks = {kind: pretrain.make_masks(kind, n, grid, 0.75, slice(None), CPU)
             for kind in ('random', 'block', 'joint', 'temporal')}
    assert (masks['random'].sum(1) == int(0.75 * length)).all()
    assert (masks['block'].sum(1) == int(0.75 * length)).all()
    lines = int(0.75 * grid + 0.5)                   # 3 of 4, 11 of 14 (round half up)
    for kind in ('joint', 'temporal'):
        assert (masks[kind].sum(1) == lines * grid).all(), kind
    joint = masks['joint'].view(n, grid, grid)      # [sample, row (time), column (joint)]
    assert (joint.all(dim=1) | ~joint.any(dim=1)).all(), 'joint masking must take whole columns'
    assert not (joint.all(dim=2)).all(), 'joint masking masked whole rows'
    temporal = masks['temporal'].view(n, grid, grid)
    assert (temporal.all(dim=2) | ~temporal.any(dim=2)).all(), 'temporal masking must take whole rows'
    for kind, mask in masks.items():              # samples differ
        assert len({tuple(m.tolist()) for m in mask}) > 1, kind


def test_block_masks_are_contiguous():
    grid, n = 14, 64
    torch.manual_seed(1)
    block = pretrain.make_masks('block', n, grid, 0.4, slice(None), CPU).view(n, grid, grid).numpy()
    rand = pretrain.make_masks('random', n, grid, 0.4, slice(None), CPU).view(n, grid, grid).numpy()
    assert (block.sum((1, 2)) == int(0.4 * grid * grid)).all()
    for mask in block:                              # no isolated masked patch
        padded = np.pad(mask, 1)
        neighbours = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
        assert (neighbours[mask]).all()
    block_parts = np.mean([components(m) for m in block])
    random_parts = np.mean([components(m) for m in rand])
    assert block_parts <= 4 and random_parts >= 10, (block_parts, random_parts)


def test_masks_do_not_depend_on_world_size():
    """Rank r's rows of a global draw are rows r::world whatever the world size."""
    for kind in ('random', 'block', 'joint', 'temporal'):
        torch.manual_seed(3)
        full = pretrain.make_masks(kind, 8, 4, 0.75, slice(None), CPU)
        torch.manual_seed(3)
        rank1 = pretrain.make_masks(kind, 8, 4, 0.75, slice(1, None, 2), CPU)
        assert torch.equal(full[1::2], rank1), kind


def test_split_ids_visible_then_masked():
    mask = torch.tensor([[True, False, True, False], [False, False, True, True]])
    keep, masked = pretrain.split_ids(mask, 2)
    assert keep.tolist() == [[1, 3], [0, 1]] and masked.tolist() == [[0, 2], [2, 3]]


def test_patchify_hand_made():
    """A 1 x 3 x 4 x 4 image with pixel (c, y, x) = 100c + 10y + x, 2 x 2 patches: patch row * 2 + col,
    inside a patch MAE's order (p, q, c): row p of the patch, column q, then the channel."""
    c, y, x = torch.meshgrid(torch.arange(3), torch.arange(4), torch.arange(4), indexing='ij')
    images = (100 * c + 10 * y + x).float()[None]                                   # (1, 3, 4, 4)
    patches = pretrain.patchify(images, 2)                                          # (1, 4, 12)
    assert patches.shape == (1, 4, 12)
    assert patches[0, 0].tolist() == [0, 100, 200, 1, 101, 201, 10, 110, 210, 11, 111, 211]
    assert patches[0, 1].tolist() == [2, 102, 202, 3, 103, 203, 12, 112, 212, 13, 113, 213]   # row 0, col 1
    assert patches[0, 2].tolist() == [20, 120, 220, 21, 121, 221, 30, 130, 230, 31, 131, 231]  # row 1, col 0
    assert torch.equal(pretrain.unpatchify(patches, 2), images)


def test_patchify_roundtrip():
    images = torch.randn(2, 3, 32, 32)
    patches = pretrain.patchify(images, 16)
    assert patches.shape == (2, 4, 768)
    assert torch.equal(patches[0, 1].view(16, 16, 3).permute(2, 0, 1), images[0, :, :16, 16:])  # row 0, col 1
    assert torch.equal(pretrain.unpatchify(patches, 16), images)


# ----------------------------------------------------------------------------------------------
# Diffusion schedule

def test_schedule_values():
    betas, alphas_bar = pretrain.diffusion_schedule(1000, 1e-4, 0.02, 1.0)
    assert len(betas) == 1000
    assert betas[0].item() == pytest.approx(1e-4, abs=1e-12) and betas[-1].item() == pytest.approx(0.02, abs=1e-12)
    assert (alphas_bar[1:] < alphas_bar[:-1]).all()
    assert alphas_bar[0].item() == pytest.approx(1 - 1e-4) and alphas_bar[-1].item() < 1e-4
    squared, _ = pretrain.diffusion_schedule(1000, 1e-4, 0.02, 2.0)
    assert torch.allclose(squared, betas ** 2, rtol=0, atol=1e-15)
    assert squared[-1].item() == pytest.approx(4e-4)


# ----------------------------------------------------------------------------------------------
# Training

def write_flat_colours(tmp_path):
    """Replace the fixture's train images by one random colour per image (+ faint noise): masked
    patches are then predictable from the visible ones, so a tiny model learns in a few dozen
    steps (the fixture's random-phase waves need far longer for masked modelling)."""
    folder = tmp_path / 'data' / 'synthetic' / 'xsub'
    rng = np.random.default_rng(0)
    images = rng.normal(0, 1, (64, 3, 1, 1)) + rng.normal(0, 0.05, (64, 3, SIZE, SIZE))
    np.save(folder / 'train_joint.npy', images.astype(np.float16))
    meta = json.loads((folder / 'meta.json').read_text())
    meta['mean']['joint'], meta['std']['joint'] = images.mean((0, 2, 3)).tolist(), images.std((0, 2, 3)).tolist()
    (folder / 'meta.json').write_text(json.dumps(meta))


@pytest.mark.parametrize('method', ['mae', 'diffmae'])
def test_loss_falls(data, method):
    write_flat_colours(data)
    pretrain.main(run_args(data, '--method', method, '--epochs', '10', '--lr', '5e-3', '--aug-space', 'none'))
    losses = [r['loss'] for r in read_log(data / 'run' / 'log.jsonl')]   # 10 epochs x 4 steps
    assert len(losses) == 10 and all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses
    assert np.mean(losses[-3:]) < np.mean(losses[3:6]) < np.mean(losses[:3]), losses
    assert sum(later > earlier for earlier, later in zip(losses, losses[1:])) <= 2, losses


@pytest.mark.parametrize('method', ['mae', 'diffmae'])
def test_bf16_autocast_step(tmp_path, method):
    """On CUDA the loop runs under bf16 autocast: a step must run there and reach every weight (CPU
    autocast takes the same dtype rules)."""
    args = run_args(tmp_path, '--method', method)
    torch.manual_seed(0)
    model = pretrain.build_model(args, SIZE)
    images = torch.randn(4, 3, SIZE, SIZE)
    mask = pretrain.make_masks('random', 4, model.grid, 0.75, slice(None), CPU)
    ids_keep, ids_masked = pretrain.split_ids(mask, pretrain.num_masked('random', model.grid, 0.75))
    noise = torch.randn(ids_masked.shape + (model.patch ** 2 * 3,))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = model(images, ids_keep, ids_masked, torch.randint(0, 1000, (4,)), noise)
    loss.backward()
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_outputs_and_checkpoint_roundtrip(data, monkeypatch):
    made = []
    build = pretrain.build_model
    monkeypatch.setattr(pretrain, 'build_model', lambda *a: made.append(build(*a)) or made[-1])
    pretrain.main(run_args(data, '--epochs', '2', '--vis', '2', '--decoder', 'cross-self'))
    run = data / 'run'
    assert sorted(os.listdir(run)) == ['checkpoint.pth', 'curves.png', 'encoder.pth', 'log.jsonl', 'vis_0002.png']
    log = read_log(run / 'log.jsonl')
    assert [r['epoch'] for r in log] == [0, 1]
    assert set(log[0]) == {'epoch', 'loss', 'lr', 'images_per_s', 'time'}
    checkpoint = torch.load(run / 'checkpoint.pth', map_location='cpu', weights_only=True)
    assert checkpoint['epoch'] == 2 and checkpoint['step'] == 8 and checkpoint['args']['method'] == 'diffmae'
    trained = made[0].state_dict()
    fresh = build(run_args(data, '--decoder', 'cross-self'), SIZE)
    assert any(not torch.equal(fresh.state_dict()[k], v) for k, v in trained.items())
    fresh.load_state_dict(checkpoint['model'])
    assert set(fresh.state_dict()) == set(trained)
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, trained[name]), name
    optimizer = torch.optim.AdamW(common.param_groups(fresh, 0.05))
    optimizer.load_state_dict(checkpoint['optimizer'])
    assert all(not p.requires_grad for n, p in fresh.named_parameters() if n.endswith('pos_embed'))
    # encoder.pth: strict into timm's ViT with num_classes=0, the same tensors as the trained encoder
    encoder = torch.load(run / 'encoder.pth', weights_only=True)
    assert encoder['meta'] == {'model': 'vit_test', 'size': SIZE, 'method': 'diffmae', 'data': 'synthetic',
                               'protocol': 'xsub', 'modality': 'joint', 'epoch': 2}
    vit = VisionTransformer(img_size=SIZE, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    vit.load_state_dict(encoder['model'], strict=True)
    for name, value in vit.state_dict().items():
        assert torch.equal(value, trained['encoder.' + name]), name
    width, height = Image.open(run / 'vis_0002.png').size      # 3 columns, 2 rows, zoom 2, and titles (test_pictures)
    assert width > 3 * SIZE * 2 and 2 * SIZE * 2 < height < 3 * SIZE * 2


@pytest.mark.parametrize('method', ['mae', 'diffmae'])
def test_resume_reproduces_uninterrupted_run(data, method):
    common_flags = ('--method', method, '--epochs', '4', '--save-every', '1', '--mask', 'block')
    pretrain.main(run_args(data, *common_flags, out='straight'))
    pretrain.main(run_args(data, *common_flags, '--stop-after', '2', out='split'))
    assert [r['epoch'] for r in read_log(data / 'split' / 'log.jsonl')] == [0, 1]
    pretrain.main(run_args(data, *common_flags, '--resume', 'auto', out='split'))
    straight = [r['loss'] for r in read_log(data / 'straight' / 'log.jsonl')]
    split = [r['loss'] for r in read_log(data / 'split' / 'log.jsonl')]
    assert len(straight) == 4 and split == straight
    a = torch.load(data / 'straight' / 'checkpoint.pth', weights_only=True)
    b = torch.load(data / 'split' / 'checkpoint.pth', weights_only=True)
    for name, value in a['model'].items():
        assert torch.equal(value, b['model'][name]), name


def test_accumulation_runs(data):
    pretrain.main(run_args(data, '--method', 'mae', '--epochs', '2', '--accum-iter', '2', '--norm-pix-loss'))
    log = read_log(data / 'run' / 'log.jsonl')
    assert len(log) == 2 and all(np.isfinite(r['loss']) for r in log)
    with pytest.raises(SystemExit, match='not divisible'):
        pretrain.main(run_args(data, '--epochs', '1', '--accum-iter', '3', out='bad'))


def test_nan_loss_stops_and_keeps_checkpoint(data, capsys):
    pretrain.main(run_args(data, '--epochs', '1'))
    checkpoint = data / 'run' / 'checkpoint.pth'
    before = checkpoint.read_bytes()
    images = np.load(data / 'data' / 'synthetic' / 'xsub' / 'train_joint.npy', mmap_mode='r+')
    images[:] = np.nan
    images.flush()
    with pytest.raises(SystemExit, match='loss is nan at epoch 1 step 1'):
        pretrain.main(run_args(data, '--epochs', '3', '--resume', 'auto', '--print-every', '1'))
    assert checkpoint.read_bytes() == before
    assert [r['epoch'] for r in read_log(data / 'run' / 'log.jsonl')] == [0]


def test_universal_union_and_size_check(data, capsys):
    write_encoded(str(data / 'data'), data='other', size=SIZE, train_per_class=8, seed=5)
    pretrain.main(run_args(data, '--epochs', '1', '--data', 'synthetic,other'))
    assert '96 train images of 64x64 from synthetic/xsub, other/xsub' in capsys.readouterr().out
    write_encoded(str(data / 'data'), data='small', size=32)
    with pytest.raises(SystemExit, match='different sizes'):
        pretrain.main(run_args(data, '--epochs', '1', '--data', 'synthetic,small', out='bad'))


def test_two_processes_match_one(data):
    """torchrun --nproc_per_node 2 (gloo) gives the loss of one process with the same global batch."""
    env = dict(os.environ, OMP_NUM_THREADS='1')
    flags = tiny_args(data, '--epochs', '2', '--lr', '1e-3', '--mask', 'block', '--accum-iter', '2')
    script = os.path.join(ROOT, 'pretrain.py')
    pretrain.main(pretrain.get_args([*flags, '--output-dir', str(data / 'one')]))   # one process, in this one
    two = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                          script, *flags, '--output-dir', str(data / 'two')], env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    one = [r['loss'] for r in read_log(data / 'one' / 'log.jsonl')]
    two = [r['loss'] for r in read_log(data / 'two' / 'log.jsonl')]
    assert len(one) == len(two) == 2
    assert np.allclose(one, two, rtol=1e-4, atol=0), (one, two)


# ----------------------------------------------------------------------------------------------
# --init

def official_mae_state(full):
    """Keys as in the official MAE release (mae_pretrain_vit_base[_full].pth), for vit_test at 224."""
    torch.manual_seed(7)
    state = dict(common.build_encoder('vit_test', 224).state_dict())      # cls_token, pos_embed, patch_embed.proj.*, blocks.N.*, norm.*
    assert set(state) >= {'cls_token', 'pos_embed', 'patch_embed.proj.weight', 'blocks.1.attn.qkv.weight', 'norm.bias'}
    if full:
        state.update({'mask_token': torch.zeros(1, 1, 16), 'decoder_embed.weight': torch.zeros(16, 32),
                      'decoder_embed.bias': torch.zeros(16), 'decoder_pos_embed': torch.zeros(1, 197, 16),
                      'decoder_blocks.0.norm1.weight': torch.ones(16), 'decoder_norm.weight': torch.ones(16),
                      'decoder_pred.weight': torch.zeros(768, 16), 'decoder_pred.bias': torch.zeros(768)})
    return {'model': state}


@pytest.mark.parametrize('full', [False, True])
def test_official_mae_checkpoint_loads(tmp_path, full):
    path = str(tmp_path / 'mae_pretrain_vit_test.pth')
    official = official_mae_state(full)
    torch.save(official, path)
    model = pretrain.build_model(pretrain.get_args(['--model', 'vit_test', '--decoder-dim', '32', '--decoder-depth', '1',
                                                    '--decoder-heads', '2']), SIZE)
    pretrain.init_encoder(model.encoder, path, 'vit_test', log=lambda *a: None)
    loaded = model.encoder.state_dict()
    for name, value in official['model'].items():
        if name.startswith(('decoder', 'mask_token')) or name == 'pos_embed':
            continue
        assert torch.equal(loaded[name], value), name
    assert torch.equal(loaded['pos_embed'], common.sincos_pos_embed(32, SIZE // 16, cls_token=True))


def test_init_decoder_loads_an_official_full_checkpoints_decoder(tmp_path, capsys):
    """--init-decoder: every decoder tensor of a models_mae.py-layout checkpoint (encoder keys bare, decoder
    beside them, decoder_pos_embed of ImageNet's 14 x 14 grid) lands in our MAE, except the fixed position
    embedding, which stays this grid's sin-cos; an encoder-only file, another decoder shape and DiffMAE are refused."""
    decoder = ['--decoder-dim', '16', '--decoder-depth', '1', '--decoder-heads', '2']
    args = pretrain.get_args(['--model', 'vit_test', '--method', 'mae', *decoder])
    torch.manual_seed(3)
    source = pretrain.build_model(args, 224)
    official = {k.removeprefix('encoder.'): torch.randn_like(v) for k, v in source.state_dict().items()}
    path = str(tmp_path / 'mae_pretrain_vit_test_full.pth')
    torch.save({'model': official}, path)
    assert official['decoder_pos_embed'].shape == (1, 197, 16)
    model = pretrain.build_model(args, SIZE)
    before = model.state_dict()
    pretrain.init_decoder(model, path)
    loaded = model.state_dict()
    names = [k for k in loaded if k.startswith(('decoder', 'mask_token')) and k != 'decoder_pos_embed']
    assert len(names) == 19 and 'decoder_blocks.0.attn.qkv.weight' in names   # mask token 1, embed 2, block 12, norm 2, pred 2
    assert all(torch.equal(loaded[k], official[k]) for k in names)
    assert torch.equal(loaded['decoder_pos_embed'], before['decoder_pos_embed'])       # fixed sin-cos of 4 x 4
    assert all(torch.equal(loaded[k], before[k]) for k in loaded if k.startswith('encoder.'))   # --init's job
    assert 'loaded 19 decoder tensors' in capsys.readouterr().out
    torch.save({'model': {k: v for k, v in official.items() if not k.startswith(('decoder', 'mask'))}}, path)
    with pytest.raises(SystemExit, match='holds no MAE decoder'):
        pretrain.init_decoder(model, path)
    torch.save({'model': official}, path)
    wider = pretrain.build_model(pretrain.get_args(['--model', 'vit_test', '--method', 'mae', '--decoder-dim', '32',
                                                    '--decoder-depth', '1', '--decoder-heads', '2']), SIZE)
    with pytest.raises(SystemExit, match=r"'mask_token' has shape \(1, 1, 16\) but this decoder's is \(1, 1, 32\)"):
        pretrain.init_decoder(wider, path)
    for method, init in (('diffmae', path), ('mae', 'imagenet')):
        with pytest.raises(SystemExit):
            pretrain.get_args(['--method', method, '--init', init, '--init-decoder'])
    assert 'needs --method mae' in capsys.readouterr().err


def test_wrong_architecture_is_a_clear_error(data):
    path = str(data / 'vit_wide.pth')
    wide = VisionTransformer(img_size=SIZE, patch_size=16, embed_dim=48, depth=2, num_heads=2, num_classes=0)
    torch.save({'model': wide.state_dict()}, path)
    with pytest.raises(SystemExit, match='vit_wide.pth.*another architecture'):
        pretrain.main(run_args(data, '--epochs', '1', '--init', path))


def test_killed_at_random_steps_and_resumed_equals_uninterrupted(data):
    """Three SIGKILLs at random steps (seeded), each followed by --resume auto: the final encoder is
    the uninterrupted run's, bit for bit."""
    from killing import run_with_kills
    argv = tiny_args(data, '--epochs', '5', '--save-every', '1', '--print-every', '1')
    pretrain.main(pretrain.get_args(argv + ['--output-dir', str(data / 'straight')]))
    kills = np.random.default_rng(12).integers(1, 5, size=3).tolist()       # 1..4 steps: each killed run gets at most ~1 epoch further
    run_with_kills(os.path.join(ROOT, 'pretrain.py'), argv + ['--output-dir', str(data / 'killed')], kills)
    assert [r['epoch'] for r in read_log(data / 'killed' / 'log.jsonl')] == list(range(5))
    a = torch.load(data / 'straight' / 'encoder.pth', weights_only=True)['model']
    b = torch.load(data / 'killed' / 'encoder.pth', weights_only=True)['model']
    assert set(a) == set(b) and all(torch.equal(value, b[name]) for name, value in a.items())


def test_bf16_autocast_and_compile_in_the_loop(data, monkeypatch):
    """pretrain.py's CUDA paths on the CPU: --precision bf16 (losses near float32's, not equal) and
    --compile (aot_eager backend: inductor's C++ build takes minutes here) with float32's losses."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, 'compile', lambda model: compile_(model, backend='aot_eager'))
    runs = {'fp32': (), 'bf16': ('--precision', 'bf16'), 'compile': ('--compile',)}
    for name, flags in runs.items():
        pretrain.main(run_args(data, '--method', 'mae', '--epochs', '2', *flags, out=name))
    losses = {name: np.array([r['loss'] for r in read_log(data / name / 'log.jsonl')]) for name in runs}
    assert np.allclose(losses['compile'], losses['fp32'], rtol=1e-5, atol=0)
    assert not np.array_equal(losses['bf16'], losses['fp32'])
    assert np.allclose(losses['bf16'], losses['fp32'], rtol=0.05, atol=0)
