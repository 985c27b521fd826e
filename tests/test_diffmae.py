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


def test_min_snr_weight_hand_computed():
    # SNR = a / (1 - a): 0.2 -> 0.25, 0.5 -> 1, 0.9 -> 9, capped at gamma = 5
    weights = pretrain.min_snr_weight(torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64))
    assert torch.allclose(weights, torch.tensor([0.25, 1.0, 5.0], dtype=torch.float64))


def small_diffmae(**kwargs):
    torch.manual_seed(0)
    encoder = common.build_encoder('vit_test', 64)
    return pretrain.DiffMAE(encoder, 4, decoder_dim=32, decoder_depth=4, decoder_heads=2, **kwargs)


def masked_inputs(t):
    torch.manual_seed(1)
    images = torch.randn(len(t), 3, 64, 64)
    mask = pretrain.make_masks('random', len(t), 4, 0.75, slice(None), torch.device('cpu'))
    ids_keep, ids_masked = pretrain.split_ids(mask, pretrain.num_masked('random', 4, 0.75))
    return images, ids_keep, ids_masked, t, torch.randn(len(t), 12, 16 * 16 * 3)


def test_min_snr_loss_is_the_weighted_mean_of_per_sample_losses():
    inputs = masked_inputs(torch.tensor([0, 100, 900]))
    plain, weighted = small_diffmae(), small_diffmae(loss_weight='min-snr')
    per_sample = []
    with torch.no_grad():
        for i in range(3):                                       # the plain loss of each sample alone
            per_sample.append(plain(*[x[i:i + 1] for x in inputs]))
        expected = (pretrain.min_snr_weight(plain.alphas_bar[inputs[3]]) * torch.stack(per_sample)).mean()
        assert torch.allclose(weighted(*inputs), expected, rtol=1e-5)
        assert not torch.allclose(plain(*inputs), expected, rtol=1e-3)


def test_own_tap_norms_leave_the_final_norm_to_the_last_block():
    model = small_diffmae(tap_norm='own')                         # vit_test's blocks tapped top-down
    depth = len(model.encoder.blocks)
    assert sorted(map(int, model.decoder_tap_norms)) == sorted(set(model.sources) - {depth - 1})
    with torch.no_grad():                                         # an own norm that differs from the final one
        for norm in model.decoder_tap_norms.values():
            norm.weight.mul_(3.0)
    images, ids_keep, *_ = masked_inputs(torch.tensor([5, 6]))
    raw = {}                                                      # each encoder block's output
    for j, block in enumerate(model.encoder.blocks):
        block.register_forward_hook(lambda module, inputs, output, j=j: raw.__setitem__(j, output))
    with torch.no_grad():
        context = model.context(images, ids_keep)
        pos = pretrain.gather_tokens(model.decoder_pos_embed.expand(2, -1, -1), torch.nn.functional.pad(ids_keep + 1, (1, 0)))
        for j, source in enumerate(model.sources):
            norm = model.encoder.norm if source == depth - 1 else model.decoder_tap_norms[str(source)]
            assert torch.allclose(context[j], model.decoder_clean_embed(norm(raw[source])) + pos, atol=1e-5)
    # the saved encoder carries none of them: it loads strictly into timm
    state, dropped = common.encoder_state_dict(model.state_dict())
    assert not any('tap_norms' in key for key in state) and any('tap_norms' in key for key in dropped)


def test_min_timestep_draws_only_the_noisier_timesteps(tmp_path):
    import fixtures
    fixtures.write_encoded(str(tmp_path))
    args = pretrain.get_args(fixtures.stage_args(tmp_path, '--min-timestep', '500', '--batch-size', '64'))
    model = pretrain.build_model(args, 32)
    meta = common.load_meta(str(tmp_path), 'synthetic', 'xsub')
    path, labels, _ = common.read_split(str(tmp_path), 'synthetic', 'xsub', 'train', 'joint')
    batch = common.S2IDataset([path], [labels]).__getitems__(list(range(64)))
    mean, std = common.channel_stats(meta, 'joint', torch.device('cpu'))
    geometry = common.skeleton_geometry([meta], args, torch.device('cpu'), [0])
    t = pretrain.masked_batch(batch, 0, args, model, (mean, std, geometry), 0, 1, torch.device('cpu'))[3]
    assert t.min() >= 500 and t.max() < 1000 and len(set(t.tolist())) > 30
