"""results.py: mean +- std over the seeds of each cell, from whatever result.json files exist."""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import results  # noqa: E402


def write(root, cell, seed, top1, best):
    folder = root / cell / f'seed{seed}'
    folder.mkdir(parents=True)
    (folder / 'result.json').write_text(json.dumps(dict(top1=top1, best_top1=best, epochs=20)))


def test_cells_mean_and_std_over_seeds(tmp_path):
    for seed, (top1, best) in enumerate([(60.0, 62.0), (70.0, 71.0), (80.0, 84.0)]):
        write(tmp_path, 'finetune_scratch', seed, top1, best)
    write(tmp_path, 'probe_random', 0, 50.0, 55.0)
    (tmp_path / 'pretrain_last' / 'seed0').mkdir(parents=True)        # unfinished: no result.json yet
    cells = results.main(results.get_args([str(tmp_path)]))
    assert sorted(cells) == ['finetune_scratch', 'probe_random']
    lines = results.table(cells).splitlines()
    assert lines[2] == '| finetune_scratch | 70.0 +- 10.0 | 3 | 72.3 | 20 |'     # sample std of 60, 70, 80
    assert lines[3] == '| probe_random | 50.0 +- 0.0 | 1 | 55.0 | 20 |'


def test_empty_folder_is_one_line(tmp_path):
    run = subprocess.run([sys.executable, 'results.py', str(tmp_path)], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert run.returncode != 0 and run.stderr.strip().count('\n') == 0 and 'no seed*/result.json' in run.stderr
