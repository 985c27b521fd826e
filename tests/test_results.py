"""results.py: mean +- std over the seeds of each cell, from whatever result.json files exist."""
import json
import os
import subprocess
import sys

import pytest

import results


def write(root, cell, seed, top1, best, num_classes=10, epoch=19, **scores):
    folder = root / cell / f'seed{seed}'
    folder.mkdir(parents=True)
    result = dict(top1=top1, best_top1=best, epoch=epoch, epochs=20, settings=dict(num_classes=num_classes), **scores)
    (folder / 'result.json').write_text(json.dumps(result))


def test_cells_mean_and_std_over_seeds(tmp_path):
    for seed, (top1, best) in enumerate([(60.0, 62.0), (70.0, 71.0), (80.0, 84.0)]):
        write(tmp_path, 'finetune_scratch', seed, top1, best)
    write(tmp_path, 'probe_random', 0, 50.0, 55.0)
    (tmp_path / 'pretrain_last' / 'seed0').mkdir(parents=True)        # unfinished: no result.json yet
    write(tmp_path, 'probe_random', 1, 90.0, 90.0, epoch=9)             # unfinished: evaluated at epoch 9 of 20
    cells = results.main(results.get_args([str(tmp_path)]))
    assert sorted(cells) == ['finetune_scratch', 'probe_random']
    lines = results.table(cells).splitlines()
    assert lines[2] == '| finetune_scratch | 70.0 +- 10.0 | 3 | 60.0 70.0 80.0 | 72.3 | 20 | - |'  # sample std
    assert lines[3] == '| probe_random | 50.0 +- 0.0 | 1 | 50.0 | 55.0 | 20 | - |'


def test_last_training_loss_beside_the_score(tmp_path):
    for seed, losses in enumerate([(2.0, 0.5), (2.0, 0.7)]):
        write(tmp_path, 'ft', seed, 70.0, 72.0)
        (tmp_path / 'ft' / f'seed{seed}' / 'log.jsonl').write_text(
            ''.join(json.dumps({'epoch': e, 'loss': loss}) + '\n' for e, loss in enumerate(losses)))
    line = results.table(results.collect(str(tmp_path))).splitlines()[2]
    assert line.endswith('| 20 | 0.600 +- 0.141 |')                       # the last epoch's, not the first


def test_mean_class_accuracy_is_tabulated_on_request(tmp_path):
    for seed, score in enumerate([40.0, 50.0]):
        write(tmp_path, 'toyota_ft', seed, 70.0, 72.0, mean_class_accuracy=score)
    fused = tmp_path / 'toyota_ensemble' / 'seed0'
    fused.mkdir(parents=True)
    (fused / 'result.json').write_text(json.dumps({'fused': {'top1': 90.0, 'top5': 99.0, 'mean_class_accuracy': 60.0},
                                                   'streams': {}, 'num_classes': 20}))
    cells = results.collect(str(tmp_path), metric='mean_class_accuracy')
    lines = results.table(cells, 'mean_class_accuracy').splitlines()
    assert lines[0].startswith('| cell | mean class accuracy (%) last epoch')
    assert lines[2] == '| toyota_ensemble | 60.0 +- 0.0 | 1 | 60.0 | - | - | - |'
    assert lines[3] == '| toyota_ft | 45.0 +- 7.1 | 2 | 40.0 50.0 | - | 20 | - |'    # no best epoch of this metric
    write(tmp_path, 'older', 0, 70.0, 72.0)                                    # written before the metric existed
    run = subprocess.run([sys.executable, 'tools/results.py', str(tmp_path), '--metric', 'mean_class_accuracy'],
                         capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert run.returncode != 0 and run.stderr.count('\n') == 1 and 'older/seed0/result.json: no mean_class_accuracy' in run.stderr


def test_cells_follow_the_patterns_order_links_and_ensembles(tmp_path):
    write(tmp_path / 'old', 'finetune', 0, 40.0, 45.0)
    (tmp_path / 'new').mkdir()
    (tmp_path / 'new' / 't1_finetune').symlink_to(tmp_path / 'old' / 'finetune')   # a cell of an earlier session
    write(tmp_path / 'new', 't3_bone', 0, 30.0, 31.0)
    fused = tmp_path / 'new' / 't3_ensemble' / 'seed0'
    fused.mkdir(parents=True)
    (fused / 'result.json').write_text(json.dumps({'fused': {'top1': 90.0, 'top5': 99.0}, 'streams': {}}))
    cells = results.collect(str(tmp_path / 'new'), ['t3_*', 't1_*'])
    assert list(cells) == ['t3_bone', 't3_ensemble', 't1_finetune']
    assert cells['t3_ensemble'] == [(90.0, 90.0, '-', None, None)]                # an older ensemble.json: no chance level
    assert cells['t1_finetune'] == [(40.0, 45.0, 20, 10.0, None)]
    (fused / 'result.json').write_text(json.dumps({'fused': {'top1': 90.0, 'top5': 99.0}, 'streams': {}, 'num_classes': 20}))
    assert results.collect(str(tmp_path / 'new'), ['t3_ensemble'])['t3_ensemble'] == [(90.0, 90.0, '-', 5.0, None)]


def test_chart_draws_a_bar_to_the_mean(tmp_path):
    from PIL import Image
    for seed, top1 in enumerate([40.0, 50.0, 60.0]):
        write(tmp_path, 't1_a', seed, top1, top1, num_classes=20)
    results.main(results.get_args([str(tmp_path), '--chart', str(tmp_path / 'chart.png')]))
    image = Image.open(tmp_path / 'chart.png').convert('RGB')
    bar = (120, 160, 210)
    row = [x for x in range(image.width) if image.getpixel((x, 56 + 20 + 10 - 4)) == bar]   # second row: the cell
    assert row and (row[-1] - row[0] + 1) / 520 == pytest.approx(0.50, abs=0.01)          # mean 50 of 100 %


def test_empty_folder_is_one_line(tmp_path):
    run = subprocess.run([sys.executable, 'tools/results.py', str(tmp_path)], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert run.returncode != 0 and run.stderr.strip().count('\n') == 0 and 'no seed*/result.json' in run.stderr


def test_signature_table_over_seeds_and_epochs(tmp_path):
    for seed, (rank, norm) in enumerate([(10.0, 3.0), (14.0, 5.0)]):
        folder = tmp_path / 'pt_mae' / f'seed{seed}'
        folder.mkdir(parents=True)
        for epoch, scale in ((0, 1.0), (25, 2.0)):
            stats = {'rank_cls': rank * scale, 'rank_mean_patch': 1.0, 'residual_norm_per_block': [1.0, norm * scale]}
            (folder / f'stats_e{epoch}.json').write_text(json.dumps(stats))
    lines = results.signature_table(str(tmp_path)).splitlines()
    assert lines[2] == '| pt_mae | 0 | 2 | 12.0 +- 2.8 | 1.0 +- 0.0 | 4.0 +- 1.4 |'
    assert lines[3] == '| pt_mae | 25 | 2 | 24.0 +- 5.7 | 1.0 +- 0.0 | 8.0 +- 2.8 |'
    assert lines[5:9] == ['| cell | epoch | block 1 | block 2 |', '|---|---|---|---|',
                          '| pt_mae | 0 | 1.0 | 4.0 |', '| pt_mae | 25 | 1.0 | 8.0 |']
    assert len(lines) == 9                                                  # no reliance.json: no third table
    for seed, own in enumerate([0.2, 0.4]):
        rows = [{'t': 0, 'own': own, 'other': 0.5, 'encoder_share': 1 - own / 0.5}, {'t': 999, 'own': 0.5, 'other': 0.5,
                                                                                    'encoder_share': 0.0}]
        (tmp_path / 'pt_mae' / f'seed{seed}' / 'reliance.json').write_text(json.dumps({'rows': rows}))
    lines = results.signature_table(str(tmp_path)).splitlines()
    assert lines[-2:] == ['| pt_mae | 0 | 2 | 0.300 +- 0.141 | 0.500 +- 0.000 | 0.400 +- 0.283 |',
                          '| pt_mae | 999 | 2 | 0.500 +- 0.000 | 0.500 +- 0.000 | 0.000 +- 0.000 |']
    rows[1]['t'] = 900                                      # one seed measured at other timesteps: refused
    (tmp_path / 'pt_mae' / 'seed1' / 'reliance.json').write_text(json.dumps({'rows': rows}))
    with pytest.raises(SystemExit, match='different timesteps'):
        results.signature_table(str(tmp_path))
