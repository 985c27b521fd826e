"""bench.py's generated NTU files: realistic enough that the real reader takes them as NTU data."""
import numpy as np

import bench
import encode


def test_generated_skeleton_files_parse_as_ntu(tmp_path):
    rng = np.random.default_rng(0)
    for bodies in (1, 2):
        path = tmp_path / f'S001C001P001R001A00{bodies}.skeleton'
        path.write_text(bench.ntu_file_text(rng, frames=90, bodies=bodies))
        skeletons = encode.read_ntu_skeleton(path)                      # (M, T, 25, 3)
        assert skeletons.shape == (bodies, 90, 25, 3)
        assert np.all(np.abs(skeletons[..., 2] - 3.5) < 1.0)            # depth near 3.5 m, like Kinect
    size_kb = len(bench.ntu_file_text(rng, frames=90, bodies=1)) / 1024
    assert 200 < size_kb < 350                                          # ~240 KB files, as the issue asks


def test_generated_names_are_distinct_ntu_names():
    names = [bench.ntu_name(k) for k in range(20000)]
    assert len(set(names)) == 20000
    info = encode.parse_ntu_name(names[12345])
    assert 1 <= info['action'] <= 120 and 1 <= info['performer'] <= 106 and 1 <= info['camera'] <= 3
