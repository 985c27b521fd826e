#!/usr/bin/env bash
# The whole S2I pipeline on the built-in synthetic dataset, sized for a CPU (a few minutes):
# encode -> pretrain (DiffMAE, per stream) -> linear probe -> fine-tune joint/bone/motion -> 3-stream ensemble.
# The models are tiny (vit_test, 64 x 64 images) so that it finishes quickly; the paper's settings are
# the scripts' defaults (see README.md).
set -euo pipefail
cd "$(dirname "$0")"
data=data runs=runs/demo
small_model="--model vit_test --data synthetic --data-root $data --num-workers 1"
small_decoder="--decoder-depth 2 --decoder-dim 64 --decoder-heads 4"

python encode.py --data synthetic --out "$data" --size 64 --modality all --quiet
for stream in joint bone motion; do
  python pretrain.py $small_model $small_decoder --modality $stream --init none --epochs 30 \
    --batch-size 64 --blr 1.5e-3 --warmup-epochs 3 --print-every 0 --output-dir "$runs/pretrain_$stream" |
    tail -n 1 | sed "s/^/pretrain $stream: /"
done
python probe.py $small_model --init "$runs/pretrain_joint/encoder.pth" --epochs 30 --warmup-epochs 3 \
  --cache-features --output-dir "$runs/probe_joint" | tail -n 1 | sed 's/^/linear probe joint: /'
for stream in joint bone motion; do
  python finetune.py $small_model --modality $stream --init "$runs/pretrain_$stream/encoder.pth" --epochs 15 \
    --warmup-epochs 2 --batch-size 32 --output-dir "$runs/finetune_$stream" | tail -n 1 | sed "s/^/fine-tune $stream: /"
done
echo "3-stream ensemble (6 classes, chance 16.7%):"
python ensemble.py "$runs"/finetune_{joint,bone,motion} --output "$runs/ensemble.json"
