"""DiffMAE's decoder reads the encoder top-down (Wei et al. 2023, Fig. 3): decoder block j cross-attends
to encoder block depth-1-j; '--cross-features last' gives every block the last encoder output."""
import torch

import common
import pretrain


def test_cross_sources_top_down_and_last():
    assert pretrain.cross_sources(12, 8, 'top-down') == [11, 10, 9, 8, 7, 6, 5, 4]   # ViT-B, 8 decoder blocks
    assert pretrain.cross_sources(12, 8, 'last') == [11] * 8
    assert pretrain.cross_sources(3, 5, 'top-down') == [2, 1, 0, 0, 0]             # deeper decoder: block 0 again


def block_contexts(cross_features):
    """What each decoder block's cross-attention received, and the encoder's per-block outputs."""
    torch.manual_seed(0)
    encoder = common.build_encoder('vit_small_patch16', 64)
    model = pretrain.DiffMAE(encoder, 4, decoder_dim=32, decoder_depth=4, decoder_heads=2, cross_features=cross_features)
    model.eval()
    received = []
    for block in model.decoder_blocks:
        block.cross_attn.register_forward_hook(lambda module, inputs, output: received.append(inputs[1]))
    images = torch.randn(2, 3, 64, 64)
    mask = pretrain.make_masks('random', 2, 4, 0.75, slice(None), torch.device('cpu'))
    ids_keep, ids_masked = pretrain.split_ids(mask, pretrain.num_masked('random', 4, 0.75))
    with torch.no_grad():
        model(images, ids_keep, ids_masked, torch.tensor([3, 500]), torch.randn(2, 12, 16 * 16 * 3))
        hidden = pretrain.encode_visible(encoder, images, ids_keep, blocks=range(len(encoder.blocks)))
        pos = pretrain.gather_tokens(model.decoder_pos_embed.expand(2, -1, -1), torch.nn.functional.pad(ids_keep + 1, (1, 0)))
        expected = {i: model.decoder_clean_embed(x) + pos for i, x in hidden.items()}
    return received, expected


def test_each_decoder_block_reads_its_encoder_block():
    received, expected = block_contexts('top-down')
    assert len(received) == 4 and len(expected) == 12                                 # vit_small: 12 blocks
    for j, context in enumerate(received):
        assert context.shape == (2, 1 + 4, 32)                                        # class token + 4 visible
        assert torch.allclose(context, expected[11 - j], atol=1e-5)
        assert not torch.allclose(context, expected[10 - j], atol=1e-3)               # not its neighbour's
    received, expected = block_contexts('last')
    assert all(torch.allclose(context, expected[11], atol=1e-5) for context in received)
