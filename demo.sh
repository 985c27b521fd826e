#!/usr/bin/env bash
# A baseline in one command: encode -> DiffMAE pretraining per stream -> linear probe (random and
# pretrained encoder) -> fine-tuning per stream (and the joint stream from scratch) -> 3-stream
# ensemble, then one table with every number, chance level and the path of every output.
#
#   bash demo.sh                                   # built-in synthetic set, vit_test at 64 x 64: about 2 minutes on 2 cores
#   bash demo.sh ucla /path/to/all_sqe             # README.md's CPU preset (vit_tiny, 64 x 64): ~25 min on 2 cores (docs/RESULTS.md's stage times)
#   bash demo.sh DATA ROOT [encode.py arguments]   # any dataset encode.py reads, e.g. ntu60 ROOT --protocol xview
#   bash demo.sh npz --input X.npz --format ntu25 --name ntu60     # generic inputs: encode.py's arguments after DATA
#
# Writes the encoded data to data/ and the runs to runs/demo/ (synthetic) or runs/demo_DATA/; each
# stage's printed output is kept in its run folder as stdout.log; progress goes to the terminal.
# DEMO_DATA and DEMO_RUNS move those folders; DEMO_PRETRAIN, DEMO_PROBE and DEMO_FINETUNE replace a
# stage's settings (tests/test_demo.py runs one-epoch stages this way).
# The paper's settings (ViT-B at 224, ImageNet weights, GPUs) are the scripts' defaults: README.md.
set -euo pipefail
cd "$(dirname "$0")"
dataset=${1:-synthetic}
[[ $# -gt 0 ]] && shift
encode_args=("$@")
if [[ $# -gt 0 && $1 != -* ]]; then encode_args=(--root "$1" "${@:2}"); fi
data=${DEMO_DATA:-data}

if [[ $dataset == synthetic ]]; then          # seconds per stage: a tiny model on 360 train sequences
  runs=${DEMO_RUNS:-runs/demo}
  # Its classes are sided (wave right arm / wave left arm, kick right leg): a true mirror (--flip mirror,
  # the default) would turn a sample into the other class or one that does not exist; x-only keeps
  # each limb in its columns.
  model="--model vit_test"
  flip="--flip x-only"
  pretrain="--epochs 30 --batch-size 64 --blr 1.5e-3 --warmup-epochs 3 --decoder-depth 2 --decoder-dim 64 --decoder-heads 4"
  probe="--epochs 30 --warmup-epochs 3"
  finetune="--epochs 15 --warmup-epochs 2 --batch-size 32"
else                                          # README.md's CPU preset (docs/RESULTS.md): from scratch, no ImageNet weights offline
  runs=${DEMO_RUNS:-runs/demo_$dataset}
  flip=""
  model="--model vit_tiny_patch16"
  pretrain="--epochs 50 --batch-size 64 --blr 1e-3 --warmup-epochs 5 --decoder-depth 2 --decoder-dim 128 --decoder-heads 4"
  probe=""
  finetune="--epochs 20 --warmup-epochs 3"
fi
pretrain=${DEMO_PRETRAIN:-$pretrain} probe=${DEMO_PROBE:-$probe} finetune=${DEMO_FINETUNE:-$finetune}
mkdir -p "$runs"
: > "$runs/stages.tsv"

stage() {  # stage NAME RUN_DIR COMMAND...: run it, keep its output in RUN_DIR/stdout.log, note the time
  local name=$1 dir=$2 start=$SECONDS
  shift 2
  mkdir -p "$dir"
  echo "$(date +%H:%M:%S) $name -> $dir"
  if ! "$@" > "$dir/stdout.log"; then
    echo "demo.sh: $name failed; its output is in $dir/stdout.log" >&2
    exit 1
  fi
  printf '%s\t%s\t%s\n' "$name" "$dir" $((SECONDS - start)) >> "$runs/stages.tsv"
}

start=$SECONDS
stage encode "$runs/encode" python encode.py --data "$dataset" "${encode_args[@]}" --out "$data" --size 64 --modality all \
  --workers 2 --preview 10
meta=$(ls -t "$data"/*/*/meta.json)            # newest first: the output encode.py just finished (meta.json is last)
meta=${meta%%$'\n'*}                            # its first line (`| head -n 1` kills a long ls by SIGPIPE under pipefail)
read -r name protocol < <(python -c "import json, sys; m = json.load(open(sys.argv[1])); print(m['dataset'], m['protocol'])" "$meta")
common="--data $name --protocol $protocol --data-root $data --num-workers 1 --print-every 0 $flip"

for m in joint bone motion; do
  stage "pretrain $m" "$runs/pretrain_$m" python pretrain.py $common $model $pretrain --modality $m --init none \
    --vis 4 --save-every 1000 --output-dir "$runs/pretrain_$m"
done
stage "linear probe, random encoder" "$runs/probe_random_joint" python probe.py $common $model $probe --init none \
  --cache-features --output-dir "$runs/probe_random_joint"
stage "linear probe, pretrained" "$runs/probe_pretrained_joint" python probe.py $common $model $probe \
  --init "$runs/pretrain_joint/encoder.pth" --cache-features --output-dir "$runs/probe_pretrained_joint"
stage "fine-tune from scratch" "$runs/finetune_scratch_joint" python finetune.py $common $model $finetune \
  --modality joint --init none --output-dir "$runs/finetune_scratch_joint"
for m in joint bone motion; do
  stage "fine-tune pretrained $m" "$runs/finetune_pretrained_$m" python finetune.py $common $model $finetune \
    --modality $m --init "$runs/pretrain_$m/encoder.pth" --output-dir "$runs/finetune_pretrained_$m"
done
stage "3-stream ensemble" "$runs" python ensemble.py "$runs"/finetune_pretrained_{joint,bone,motion} \
  --output "$runs/ensemble.json"

python - "$runs" "$(dirname "$meta")" $((SECONDS - start)) <<'EOF'
"""The summary: one row per stage with its result, time and outputs; chance level; the paper's ordering."""
import json, math, os, sys
runs, encoded, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
meta = json.load(open(os.path.join(encoded, 'meta.json')))
chance = 100 / meta['num_classes']
by_class = meta.get('metric') == 'mean_class_accuracy'   # the protocol's own metric (e.g. Toyota Smarthome's)
rows, top1 = [], {}
for line in open(os.path.join(runs, 'stages.tsv')):
    name, folder, seconds = line.rstrip('\n').split('\t')
    files = sorted(f for f in os.listdir(folder) if f.endswith(('.pth', '.png', '.json', '.jsonl', '.npy', '.txt', '.log'))
                   and f != 'stages.tsv' and (folder != runs or f.startswith('ensemble')) and f != 'checkpoint.pth')
    if name == 'encode':
        result, folder = f"{meta['counts']['train']} train / {meta['counts']['test']} test, {meta['num_classes']} classes", encoded
        files = sorted(f + '/' * os.path.isdir(os.path.join(encoded, f)) for f in os.listdir(encoded))
    elif name.startswith('pretrain'):
        log = [json.loads(l) for l in open(os.path.join(folder, 'log.jsonl'))]
        result = f"loss {log[0]['loss']:.3f} -> {log[-1]['loss']:.3f}"
    else:   # a probe, a fine-tuning or the ensemble
        scores = json.load(open(os.path.join(runs, 'ensemble.json')))['fused'] if name == '3-stream ensemble' \
            else json.load(open(os.path.join(folder, 'result.json')))
        result, top1[name] = f"top-1 {scores['top1']:.1f}  top-5 {scores['top5']:.1f}", scores['top1']
        if by_class:
            result += f"  mean class {scores['mean_class_accuracy']:.1f}"
        if name == '3-stream ensemble':
            files = ['ensemble.json']
    shown = folder.rstrip('/') + '/' + ('{' + ','.join(files) + '}' if len(files) > 1 else ''.join(files))
    rows.append((name, result, f'{int(seconds)} s', shown))
widths = [max(len(r[i]) for r in rows + [('stage', 'result (%)', 'time', 'outputs')]) for i in range(3)]
print()
for row in [('stage', 'result (%)', 'time', 'outputs')] + rows:
    print('  '.join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + '  ' + row[3])
scored = '; this protocol is scored by the mean class accuracy' if by_class else ''
print(f"chance level: {chance:.1f}% ({meta['num_classes']} classes); top-1 is the last epoch's{scored}; "
      f"total {total // 60} min {total % 60} s")
tuned, probe, scratch = top1['fine-tune pretrained joint'], top1['linear probe, pretrained'], top1['fine-tune from scratch']
if tuned > probe and tuned > scratch:
    print(f'as in the paper, fine-tuning after pretraining ({tuned:.1f}) beats the linear probe ({probe:.1f}) '
          f'and fine-tuning from scratch ({scratch:.1f})')
else:   # say why, from the runs themselves: how far fine-tuning got, and how easy the classes are
    log = [json.loads(l) for l in open(os.path.join(runs, 'finetune_pretrained_joint', 'log.jsonl'))]
    easy = top1['linear probe, random encoder']
    print(f'unlike the paper, fine-tuning after pretraining ({tuned:.1f}) is not above both the linear probe ({probe:.1f}) '
          f'and fine-tuning from scratch ({scratch:.1f}): at this size ({meta["counts"]["train"]} train samples, '
          f'{len(log)} epochs, no ImageNet weights) fine-tuning ends at training loss {log[-1]["loss"]:.2f} (a uniform '
          f'guess: {math.log(meta["num_classes"]):.2f})' + (f', and the probe does as well on a random '
                                                            f'encoder ({easy:.1f})' if easy >= probe else ''))
EOF
