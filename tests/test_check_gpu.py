"""check_gpu.py: the one-GPU check runs end to end on the CPU with --tiny, plans its epochs from the
measured rates, and learns; a failing step stops with one line naming its log."""
import json
import os
import subprocess
import sys

import pytest

import check_gpu

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_plan_epochs_fills_the_budget_and_stays_in_range():
    assert check_gpu.plan_epochs(60, 100.0, 1000, 1600) == 6        # 6000 images in 60 s: 6 epochs of 1000
    assert check_gpu.plan_epochs(60, 100.0, 7000, 1600) == 1        # less than one epoch still runs one
    assert check_gpu.plan_epochs(600, 1000.0, 1000, 100) == 100     # capped at the paper's count
    assert check_gpu.warmup_epochs(800, 40, 1600) == 20             # Table 11's share: 40 of 1600
    assert check_gpu.warmup_epochs(15, 10, 100) == 2                # Table 12's share: 10 of 100
    assert check_gpu.warmup_epochs(3, 40, 1600) == 1


def test_tiny_check_runs_every_step_and_learns(tmp_path):
    out = tmp_path / 'check'
    report = check_gpu.main(check_gpu.get_args([str(out), '--tiny', '--data', 'synthetic', '--pretrain-minutes', '0.1',
                                                '--finetune-epochs', '20']))
    saved = json.loads((out / 'check.json').read_text())
    assert saved['pretrain'] == report['pretrain'] and saved['finetune'] == report['finetune']
    names = {(r['name'], r['settings'].get('method')) for r in saved['bench']}
    for method in ('mae', 'diffmae'):
        assert ('train_loop_images_per_s', method) in names and ('train_bare_step_images_per_s', method) in names
    assert ('finetune_bare_step_images_per_s', 'finetune') in names and ('loader_images_per_s_per_core', None) in names
    rate = check_gpu.figure(saved['bench'], 'train_loop_images_per_s', model='vit_test', method='diffmae')
    assert saved['pretrain']['epochs'] == check_gpu.plan_epochs(6, rate * 0.7, 360, 1600)
    log = [json.loads(line) for line in (out / 'pretrain' / 'log.jsonl').read_text().splitlines()]
    assert len(log) == saved['pretrain']['epochs']
    assert saved['encode']['train'] == 360 and saved['finetune']['chance'] == pytest.approx(100 / 6)
    assert saved['finetune']['top1'] > 2.5 * saved['finetune']['chance']   # 6 easy classes: far above chance
    table = (out / 'check.md').read_text()
    assert '| fine-tune top-1 |' in table and '| train_bare_step_images_per_s diffmae |' in table


def test_a_failing_step_names_its_log(tmp_path):
    run = subprocess.run([sys.executable, 'tools/check_gpu.py', str(tmp_path / 'out'), '--tiny', '--data', 'ucla',
                          '--root', str(tmp_path / 'missing')], cwd=HERE, capture_output=True, text=True)
    assert run.returncode != 0 and 'Traceback' not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('check_gpu.py: encode failed') and 'encode.log' in lines[0]


def test_a_folder_in_use_is_refused(tmp_path):
    (tmp_path / 'check.json').write_text('{}')
    run = subprocess.run([sys.executable, 'tools/check_gpu.py', str(tmp_path), '--tiny'], cwd=HERE, capture_output=True,
                         text=True)
    assert run.returncode != 0 and run.stderr.strip().count('\n') == 0 and 'not empty' in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ['check.json']
