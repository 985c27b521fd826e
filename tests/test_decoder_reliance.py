"""tools/decoder_reliance.py: the encoder's share of a pretraining decoder's error (DiffMAE per timestep, MAE once)."""
import os
import subprocess
import sys

import torch

import common
import decoder_reliance
import pretrain
from fixtures import stage_args, write_encoded

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def checkpoint(tmp_path, *extra):
    """A checkpoint.pth of a new (untrained) model in the layout pretrain.py writes (DiffMAE unless told)."""
    write_encoded(str(tmp_path / 'data'), num_classes=4, size=32)
    args = pretrain.get_args(stage_args(tmp_path / 'data', '--decoder-depth', '2', '--decoder-dim', '32',
                                        '--decoder-heads', '2', *extra))
    args.protocol = 'xsub'
    torch.manual_seed(0)
    model = pretrain.build_model(args, 32)
    optimizer = torch.optim.AdamW(model.parameters())
    os.makedirs(tmp_path / 'run', exist_ok=True)
    common.save_checkpoint(str(tmp_path / 'run'), model, optimizer, 3, args, 'pretrain', step=0)
    return model, str(tmp_path / 'run' / 'checkpoint.pth')


def measure(tmp_path, path, *extra):
    return decoder_reliance.main(decoder_reliance.get_args([path, '--data-root', str(tmp_path / 'data'),
                                                            '--samples', '8', '--timesteps', '0,500,999', *extra]))


def test_a_decoder_that_cannot_see_the_encoder_gets_no_share(tmp_path):
    model, path = checkpoint(tmp_path)
    rows = measure(tmp_path, path)['rows']
    assert [row['t'] for row in rows] == [0, 500, 999]
    assert all(abs(row['encoder_share']) > 1e-4 for row in rows)                # another image's tokens change it
    state = torch.load(path, weights_only=True)
    for j in range(2):                                       # cross-attention outputs zero: the context is unread
        state['model'][f'decoder_blocks.{j}.cross_attn.proj.weight'].zero_()
        state['model'][f'decoder_blocks.{j}.cross_attn.proj.bias'].zero_()
    torch.save(state, path)
    for row in measure(tmp_path, path)['rows']:
        assert row['own'] == row['other'] and row['encoder_share'] == 0.0


def test_mae_once_and_blind_without_its_encoder_tokens(tmp_path):
    model, path = checkpoint(tmp_path, '--method', 'mae')
    rows = measure(tmp_path, path)['rows']
    assert len(rows) == 1 and rows[0]['t'] is None and abs(rows[0]['encoder_share']) > 1e-4
    state = torch.load(path, weights_only=True)
    state['model']['decoder_embed.weight'].zero_()           # every image's encoder tokens become the same
    torch.save(state, path)
    row = measure(tmp_path, path)['rows'][0]
    assert row['own'] == row['other'] and row['encoder_share'] == 0.0


def test_own_loss_is_the_models_x0_loss(tmp_path):
    """The 'own' loss at t is pretraining's loss (eq. 2) on the same images, masks, t and noise."""
    model, path = checkpoint(tmp_path, '--tap-norm', 'own')                  # a newer flag, read back from args
    images = torch.randn(4, 3, 32, 32)
    mask = pretrain.make_masks('random', 4, 2, 0.75, slice(None), torch.device('cpu'))
    ids_keep, ids_masked = pretrain.split_ids(mask, pretrain.num_masked('random', 2, 0.75))
    model.eval()
    measured = decoder_reliance.reliance(model, images, ids_keep, ids_masked, [700], seed=5)[0][1:]
    torch.manual_seed(5)
    noise = torch.randn(4, ids_masked.shape[1], 16 * 16 * 3)
    with torch.no_grad():
        expected = model(images, ids_keep, ids_masked, torch.full((4,), 700), noise)
    assert abs(measured[0] - float(expected)) < 1e-6


def test_a_finetune_checkpoint_is_one_line(tmp_path):
    _, path = checkpoint(tmp_path)
    state = torch.load(path, weights_only=True)
    state['stage'] = 'finetune'
    torch.save(state, path)
    run = subprocess.run([sys.executable, 'tools/decoder_reliance.py', path, '--data-root', str(tmp_path / 'data')],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode != 0 and run.stderr.strip().count('\n') == 0 and 'expected a pretraining' in run.stderr
    assert run.stdout == ''


def test_data_encoded_at_another_size_is_one_line(tmp_path):
    _, path = checkpoint(tmp_path)                                              # pretrained at 32 x 32
    write_encoded(str(tmp_path / 'other'), num_classes=4, size=64)
    run = subprocess.run([sys.executable, 'tools/decoder_reliance.py', path, '--data-root', str(tmp_path / 'other')],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode != 0 and run.stderr.strip().count('\n') == 0 and 'encoded at 64 x 64' in run.stderr
