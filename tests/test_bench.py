"""bench.py's helpers: generated NTU files real enough for the real reader, and the DDP device choice."""
import numpy as np
import torch

import bench
import encode


def test_generated_skeleton_files_parse_as_ntu(tmp_path):
    rng = np.random.default_rng(0)
    for bodies in (1, 2):
        path = tmp_path / f'S001C001P001R001A00{bodies}.skeleton'
        path.write_text(bench.ntu_file_text(rng, frames=90, bodies=bodies))
        skeletons = encode.read_ntu_skeleton(path, bodies='slot')       # (M, T, 25, 3) as in the file
        assert skeletons.shape == (bodies, 90, 25, 3)
        assert np.all(np.abs(skeletons[..., 2] - 3.5) < 1.0)            # depth near 3.5 m, like Kinect
    size_kb = len(bench.ntu_file_text(rng, frames=90, bodies=1)) / 1024
    assert 200 < size_kb < 350                                          # ~240 KB files, as the issue asks


def test_generated_names_are_distinct_ntu_names():
    names = [bench.ntu_name(k) for k in range(20000)]
    assert len(set(names)) == 20000
    info = encode.parse_ntu_name(names[12345])
    assert 1 <= info['action'] <= 120 and 1 <= info['performer'] <= 106 and 1 <= info['camera'] <= 3


def test_ddp_bench_needs_a_gpu_per_process(monkeypatch):
    """One GPU cannot hold two NCCL ranks: the 1 vs 2 process comparison then runs on the CPU."""
    cuda = torch.device('cuda')
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    assert bench.ddp_device(cuda) == 'cpu' and bench.ddp_device(torch.device('cpu')) == 'cpu'
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 8)
    assert bench.ddp_device(cuda) == 'cuda'
