"""tools/encoder_stats.py: effective rank on hand-made features, residual norms per block, the command line."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import common
import encoder_stats
from fixtures import write_encoded

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_effective_rank_hand_computed():
    # centred rows along two axes with singular values 3 * sqrt(2) and sqrt(2): p = (3/4, 1/4)
    two = torch.tensor([[3.0, 0, 0], [-3.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]])
    assert encoder_stats.effective_rank(two) == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
    three = torch.cat([torch.eye(3), -torch.eye(3)]) + 5.0        # three equal directions, shifted: the shift is centred away
    assert encoder_stats.effective_rank(three) == pytest.approx(3.0)
    assert encoder_stats.effective_rank(torch.ones(4, 3)) == 0.0  # every sample the same: no direction


def test_blocks_that_add_nothing_keep_the_residual_norm_and_collapse_the_class_token():
    """With each block's attention and MLP output zeroed, the residual stream is the embedding after
    every block, and the class token (the same embedding for every image) spans no direction."""
    torch.manual_seed(0)
    encoder = common.build_encoder('vit_test', 32).eval()
    with torch.no_grad():
        for block in encoder.blocks:
            for layer in (block.attn.proj, block.mlp.fc2):
                layer.weight.zero_()
                layer.bias.zero_()
    images = torch.randn(6, 3, 32, 32)
    stats = encoder_stats.signature(encoder, images)
    with torch.no_grad():
        embedded = encoder._pos_embed(encoder.patch_embed(images))                     # (N, 1 + L, D)
    assert stats['residual_norm_per_block'] == pytest.approx([float(embedded.norm(dim=-1).mean())] * 2, rel=1e-5)
    assert stats['rank_cls'] == 0.0 and stats['rank_mean_patch'] > 1.0


def test_command_line_prints_one_json_line(tmp_path):
    write_encoded(str(tmp_path / 'data'), num_classes=4, size=32)
    run = subprocess.run([sys.executable, 'tools/encoder_stats.py', 'none', '--data', 'synthetic', '--data-root',
                          str(tmp_path / 'data'), '--model', 'vit_test', '--samples', '20'],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result['samples'] == 20 and len(result['residual_norm_per_block']) == 2      # vit_test: 2 blocks
    assert 1.0 < result['rank_cls'] <= 20
