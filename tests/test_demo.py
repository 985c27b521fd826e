"""demo.sh end to end on a tiny synthetic set: every stage runs and the summary table is true.

The stage settings are shrunk through demo.sh's DEMO_* variables (one or two epochs), so this checks
the wiring and the summary, not the accuracy (test_pipeline.py checks learning)."""
import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_summary_names_every_output(tmp_path):
    for i in range(3000):    # other datasets already encoded there: the summary still reads the one just written
        (tmp_path / 'data' / f'other{i}' / 'xsub').mkdir(parents=True)
        (tmp_path / 'data' / f'other{i}' / 'xsub' / 'meta.json').write_text('{}')
    env = dict(os.environ, DEMO_DATA=str(tmp_path / 'data'), DEMO_RUNS=str(tmp_path / 'runs'), OMP_NUM_THREADS='1',
               DEMO_PRETRAIN='--epochs 1 --batch-size 30 --warmup-epochs 0 --decoder-depth 1 --decoder-dim 32 --decoder-heads 2',
               DEMO_PROBE='--epochs 2 --warmup-epochs 0', DEMO_FINETUNE='--epochs 1 --warmup-epochs 0 --batch-size 30')
    out = subprocess.run(['bash', os.path.join(ROOT, 'demo.sh'), 'synthetic', '--synthetic-train', '10', '--synthetic-test', '4',
                          '--metric', 'mean_class_accuracy'],                    # scored as Toyota Smarthome is
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith('stage '))
    rows = lines[header + 1:]
    stages = ['encode', 'pretrain joint', 'pretrain bone', 'pretrain motion', 'linear probe, random encoder',
              'linear probe, pretrained', 'fine-tune from scratch', 'fine-tune pretrained joint',
              'fine-tune pretrained bone', 'fine-tune pretrained motion', '3-stream ensemble']
    assert [row[:len(stage)] for row, stage in zip(rows, stages)] == stages
    for row in rows[:11]:                                   # every path in the outputs column exists
        path = row.rsplit('  ', 1)[1]
        folder, files = path[:-1].split('{') if path.endswith('}') else os.path.split(path)
        for name in files.split(','):
            assert os.path.exists(os.path.join(folder, name)), (row, name)
    runs = tmp_path / 'runs'
    assert 'curves.png' in rows[1] and 'vis_0001.png' in rows[1] and 'encoder.pth' in rows[1]
    assert 'confusion.png' in rows[7] and 'curves.png' in rows[7]
    assert os.path.isfile(tmp_path / 'data' / 'synthetic' / 'default' / 'preview' / 'grid.png')
    result = json.loads((runs / 'finetune_pretrained_joint' / 'result.json').read_text())
    assert f"top-1 {result['top1']:.1f}  top-5 {result['top5']:.1f}  mean class {result['mean_class_accuracy']:.1f}" in rows[7]
    fused = json.loads((runs / 'ensemble.json').read_text())['fused']
    assert f"top-1 {fused['top1']:.1f}  top-5 {fused['top5']:.1f}  mean class {fused['mean_class_accuracy']:.1f}" in rows[10]
    assert 'mean class' not in rows[1]                                   # pretraining: its loss only
    assert rows[11].startswith('chance level: 16.7% (6 classes)') and 'scored by the mean class accuracy' in rows[11]
    top1 = {run: json.loads((runs / run / 'result.json').read_text())['top1']
            for run in ('probe_pretrained_joint', 'finetune_scratch_joint', 'finetune_pretrained_joint')}
    ordered = top1['finetune_pretrained_joint'] > max(top1['probe_pretrained_joint'], top1['finetune_scratch_joint'])
    assert rows[12].startswith('as in the paper' if ordered else 'unlike the paper'), (rows[12], top1)
    assert 'preview/' in rows[0]
