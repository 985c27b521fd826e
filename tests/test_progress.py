"""Progress lines in a log, and --init imagenet without internet."""
import socket
import time

import pytest
import torch

import common


class FakeClock:
    """time.time() that moves only when a step 'runs'."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def steps(clock, count, seconds_each):
    for i in range(count):
        clock.now += seconds_each
        yield i


def test_progress_lines_in_a_log(monkeypatch, capsys):
    """Not a terminal: a line every 2 steps with images/s and the run's time left, all items passed on.

    Steps take 0.5 s, batches hold 8 images: 16 images/s. Run = 10 steps done before + this loop's
    6 of 20: after step 2, 20 - 10 - 2 = 8 steps at 2 steps/s are left = 4 s; after step 6, 2 s."""
    clock = FakeClock()
    monkeypatch.setattr(common.time, 'time', clock)
    monkeypatch.setattr(common, '_last_line', [clock.now])
    monkeypatch.setattr(common.sys.stderr, 'isatty', lambda: False)
    seen = list(common.progress(steps(clock, 6, 0.5), 'epoch 1', 6, batch_size=8, print_every=2,
                                status=lambda: 'loss 0.5', run=(10, 20)))
    assert seen == list(range(6))
    lines = capsys.readouterr().err.splitlines()
    assert lines == ['epoch 1 step 2/6 loss 0.5 16.0 img/s, 4s left',
                     'epoch 1 step 4/6 loss 0.5 16.0 img/s, 3s left',
                     'epoch 1 step 6/6 loss 0.5 16.0 img/s, 2s left']


def test_progress_every_30_seconds_without_print_every(monkeypatch, capsys):
    """print_every 0: a line only when 30 s have passed since the last line, across loops."""
    clock = FakeClock()
    monkeypatch.setattr(common.time, 'time', clock)
    monkeypatch.setattr(common, '_last_line', [clock.now])
    monkeypatch.setattr(common.sys.stderr, 'isatty', lambda: False)
    list(common.progress(steps(clock, 5, 10.0), 'test', 5))          # a line at step 3 (30 s), none at 4, 5
    list(common.progress(steps(clock, 4, 10.0), 'test', 4))          # step 1 is 30 s after that line, then step 4
    lines = capsys.readouterr().err.splitlines()
    assert lines == ['test step 3/5 0.1 img/s, 20s left', 'test step 1/4 0.1 img/s, 30s left',
                     'test step 4/4 0.1 img/s, 0s left']


def test_progress_on_a_terminal_is_a_bar(monkeypatch, capsys):
    monkeypatch.setattr(common.sys.stderr, 'isatty', lambda: True)
    assert list(common.progress(range(3), 'epoch 0', 3, batch_size=4)) == [0, 1, 2]
    assert 'epoch 0' in capsys.readouterr().err                     # tqdm's bar, not our lines


def test_format_duration():
    assert [common.format_duration(s) for s in (0.4, 59, 61, 3599, 3600, 7380)] == \
        ['0s', '59s', '1m01s', '59m59s', '1h00m', '2h03m']


def test_imagenet_offline_fails_within_seconds(monkeypatch):
    """No route to the hub: the connection attempt is short, and the message comes at once."""
    timeouts = []

    def unreachable(address, timeout=None):
        timeouts.append((address, timeout))
        raise socket.timeout('timed out')

    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
    monkeypatch.delenv('HTTPS_PROXY', raising=False)
    monkeypatch.delenv('https_proxy', raising=False)
    monkeypatch.delenv('HF_ENDPOINT', raising=False)
    monkeypatch.setattr(socket, 'create_connection', unreachable)
    monkeypatch.setattr(common, 'cached_hub_file', lambda repo: None)
    encoder = common.build_encoder('vit_tiny_patch16', 32)
    start = time.time()
    with pytest.raises(SystemExit, match="could not download timm weights 'vit_tiny_patch16_224' .*unreachable.*--init PATH"):
        common.load_encoder_weights(encoder, 'imagenet', 'vit_tiny_patch16')
    assert time.time() - start < 3
    assert timeouts == [(('huggingface.co', 443), 3.0)]


def test_imagenet_offline_env_skips_the_network(monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr(socket, 'create_connection', lambda *a, **k: pytest.fail('no connection attempt offline'))
    assert not common.hub_reachable()


def test_imagenet_offline_uses_the_local_cache(monkeypatch, tmp_path):
    """Offline with the weights in the Hugging Face cache: they are loaded from that file."""
    from safetensors.torch import save_file
    import timm
    source = timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=0)
    path = str(tmp_path / 'model.safetensors')
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    monkeypatch.setattr(common, 'hub_reachable', lambda: False)
    monkeypatch.setattr(common, 'cached_hub_file', lambda repo: path if repo == 'timm/vit_tiny_patch16_224' else None)
    encoder = common.build_encoder('vit_tiny_patch16', 224)
    common.load_encoder_weights(encoder, 'imagenet', 'vit_tiny_patch16', log=lambda *a: None)
    assert torch.equal(encoder.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert torch.equal(encoder.patch_embed.proj.weight, source.patch_embed.proj.weight)
