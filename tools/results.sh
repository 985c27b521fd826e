#!/usr/bin/env bash
# The runs behind docs/RESULTS.md: the paper's claims at CPU scale on NW-UCLA and MSR Action3D, 3 seeds.
#
#   bash tools/results.sh encode        # NW-UCLA and MSR Action3D at 64 x 64, every stream, into $DATA (seconds)
#   bash tools/results.sh t1 0          # one group of cells for one seed (names below); seeds 0 1 2 in docs/RESULTS.md
#   bash tools/results.sh all           # every group, seeds 0 1 2: about 6.5 hours of one core; run two at a time
#   python tools/results.py results/s2i_cpu          # the tables, from whatever runs have finished
#
# Each run writes $R/CELL/seedN/ (result.json for probe and fine-tune, encoder.pth for pretraining).
# A run that ended is skipped (its folder holds `finished`) and a killed run resumes (--resume auto),
# so the groups can be stopped and restarted across sessions. Groups after t1 read t1's encoders.
# The CPU preset (README.md, "CPU preset"): vit_tiny at 64 x 64 (a 4 x 4 patch grid), no ImageNet
# weights, a 2 x 128 decoder, NW-UCLA pretraining 50 epochs and fine-tuning 20; runs on 1 thread.
# DATA and R move the encoded data and the results; S2I_DATA is the folder holding nw_ucla/ and
# msr_action3d/ (the encode group needs it).
set -euo pipefail
cd "$(dirname "$0")/.."                # the stages and data/ are at the project root
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
DATA=${DATA:-data/cpu64} R=${R:-results/s2i_cpu} SHARED=${S2I_DATA:-}
U="--data ucla --data-root $DATA"
M="--data msr20 --protocol xsub --data-root $DATA"
# --flip x-only: the flip every cell of docs/RESULTS.md was measured with, before the mirror (now the
# default) existed; the flip group compares the two.
PT="--model vit_tiny_patch16 --init none --batch-size 64 --blr 1e-3 --decoder-depth 2 --decoder-dim 128 --decoder-heads 4 --num-workers 1 --flip x-only"
FT="--model vit_tiny_patch16 --num-workers 1 --flip x-only"
PR="--model vit_tiny_patch16 --cache-features --num-workers 1"
UPT="$PT --epochs 50 --warmup-epochs 5"      # NW-UCLA pretraining: 1020 samples, 15 full batches, 750 steps
MPT="$PT --epochs 150 --warmup-epochs 15"    # MSR pretraining: 291 samples, 150 epochs = 600 steps
UFT="$FT --epochs 20 --warmup-epochs 3"      # NW-UCLA fine-tuning: 620 steps
MFT="$FT --epochs 50 --warmup-epochs 5 --batch-size 32"   # MSR fine-tuning: NW-UCLA's batch (Table 12), 450 steps
enc() { echo "$R/pretrain_$1/seed$2/encoder.pth"; }

# run OUT CMD...: CMD into OUT unless OUT/finished says it ran to its end (result.json and encoder.pth
# are also written at intermediate epochs, so they do not); prints one line per run.
run() {
  local out=$1; shift
  if [[ -f $out/finished ]]; then return 0; fi
  mkdir -p "$out"
  local start=$SECONDS
  "$@" --output-dir "$out" --resume auto > "$out/run.log" 2>&1 || { echo "failed: $out (see $out/run.log)"; return 1; }
  touch "$out/finished"
  echo "$(date +%T) $out $((SECONDS - start)) s"
}

encode() {
  : "${SHARED:?set S2I_DATA to the folder holding nw_ucla/ and msr_action3d/}"
  python encode.py --data ucla --root "$SHARED/nw_ucla/all_sqe" --out "$DATA" --size 64 --modality all --workers 2
  python encode.py --data npz --input "$SHARED/msr_action3d/msr_action3d.npz" --format msr20 --name msr20 \
    --protocol xsub --out "$DATA" --size 64 --modality all --workers 2
  python encode.py --data ucla --root "$SHARED/nw_ucla/all_sqe" --out "$DATA/112" --size 112 --modality joint --workers 2
}

preset() {  # model and resolution: scratch fine-tuning (vit_tiny at 64 is t1_ft_scratch) and pretraining speed
  local s=$1 U112="--data ucla --data-root $DATA/112"
  run $R/preset_ft_tiny112/seed$s python finetune.py $U112 $UFT --init none --seed $s
  run $R/preset_ft_small64/seed$s python finetune.py $U $UFT --model vit_small_patch16 --init none --seed $s
  run $R/preset_pretrain_tiny64/seed$s python pretrain.py $U $UPT --stop-after 2 --seed $s
  run $R/preset_pretrain_tiny112/seed$s python pretrain.py $U112 $UPT --stop-after 2 --seed $s
  run $R/preset_pretrain_small64/seed$s python pretrain.py $U $UPT --model vit_small_patch16 --stop-after 2 --seed $s
}

t1() {  # Table 1: no pretraining vs MAE vs DiffMAE (and its decoder reading only the last encoder block)
  local s=$1
  run $R/t1_probe_random/seed$s python probe.py $U $PR --init none --seed $s
  run $R/t1_ft_scratch/seed$s python finetune.py $U $UFT --init none --seed $s
  local -A flags=([diffmae]="--cross-features top-down" [diffmae_last]="--cross-features last" [mae]="--method mae")
  for method in diffmae diffmae_last mae; do
    run $R/pretrain_$method/seed$s python pretrain.py $U $UPT ${flags[$method]} --seed $s
    run $R/t1_probe_$method/seed$s python probe.py $U $PR --init $(enc $method $s) --seed $s
    run $R/t1_ft_$method/seed$s python finetune.py $U $UFT --init $(enc $method $s) --seed $s
  done
}

t2() {  # Table 2: masking (random is Table 1's DiffMAE), linear probe on the class token and on the mean of the patches
  local s=$1
  for mask in block joint temporal; do
    run $R/pretrain_mask_$mask/seed$s python pretrain.py $U $UPT --mask $mask --seed $s
    run $R/t2_probe_$mask/seed$s python probe.py $U $PR --init $(enc mask_$mask $s) --seed $s
    run $R/t2_probe_mean_$mask/seed$s python probe.py $U $PR --pool mean --init $(enc mask_$mask $s) --seed $s
  done
}

t3() {  # Table 3: bone and motion streams, and the 3-stream ensemble with Table 1's joint stream
  local s=$1
  for stream in bone motion; do
    run $R/pretrain_$stream/seed$s python pretrain.py $U $UPT --modality $stream --seed $s
    run $R/t3_ft_$stream/seed$s python finetune.py $U $UFT --modality $stream --init $(enc $stream $s) --seed $s
  done
  mkdir -p $R/t3_ensemble/seed$s
  python ensemble.py $R/t1_ft_diffmae/seed$s $R/t3_ft_bone/seed$s $R/t3_ft_motion/seed$s \
    --output $R/t3_ensemble/seed$s/result.json > $R/t3_ensemble/seed$s/run.log
}

t6() {  # Table 6: 10% of the labels (102 samples), 100 epochs so that the run has 300 steps
  local s=$1 few="--label-fraction 0.1 --epochs 100 --warmup-epochs 10"
  run $R/t6_ft_scratch/seed$s python finetune.py $U $FT $few --init none --seed $s
  run $R/t6_ft_diffmae/seed$s python finetune.py $U $FT $few --init $(enc diffmae $s) --seed $s
  run $R/t6_ft_mae/seed$s python finetune.py $U $FT $few --init $(enc mae $s) --seed $s
}

t8() {  # Table 8: MSR Action3D <-> NW-UCLA (msr20 and ucla20: the same 20 Kinect v1 joints, other order)
  local s=$1
  run $R/pretrain_msr/seed$s python pretrain.py $M $MPT --seed $s
  run $R/t8_msr_ft_scratch/seed$s python finetune.py $M $MFT --init none --seed $s
  run $R/t8_msr_ft_from_msr/seed$s python finetune.py $M $MFT --init $(enc msr $s) --seed $s
  run $R/t8_msr_ft_from_ucla/seed$s python finetune.py $M $MFT --init $(enc diffmae $s) --seed $s
  run $R/t8_ucla_ft_from_msr/seed$s python finetune.py $U $UFT --init $(enc msr $s) --seed $s
}

t9() {  # Table 9: universal pretraining on both train splits (NW-UCLA's statistics, A.5)
  local s=$1
  run $R/pretrain_universal/seed$s python pretrain.py --data ucla,msr20 --protocol xview,xsub --data-root $DATA $UPT --seed $s
  run $R/t9_ucla_ft_from_universal/seed$s python finetune.py $U $UFT --init $(enc universal $s) --seed $s
  run $R/t9_msr_ft_from_universal/seed$s python finetune.py $M $MFT --init $(enc universal $s) --seed $s
}

ablations() {  # the readings the paper leaves open, on Table 1's encoders
  local s=$1
  run $R/ab_probe_blr_random/seed$s python probe.py $U $PR --blr 0.2 --init none --seed $s
  run $R/ab_probe_blr_diffmae/seed$s python probe.py $U $PR --blr 0.2 --init $(enc diffmae $s) --seed $s
  for method in random diffmae mae; do
    run $R/ab_probe_mean_$method/seed$s python probe.py $U $PR --pool mean \
      --init $([[ $method == random ]] && echo none || enc $method $s) --seed $s
  done
  run $R/ab_ft_mean_scratch/seed$s python finetune.py $U $UFT --pool mean --init none --seed $s
  run $R/ab_ft_mean_diffmae/seed$s python finetune.py $U $UFT --pool mean --init $(enc diffmae $s) --seed $s
  run $R/ab_ft_blr_diffmae/seed$s python finetune.py $U $UFT --blr 1e-3 --init $(enc diffmae $s) --seed $s
  run $R/ab_ft_droppath0_diffmae/seed$s python finetune.py $U $UFT --drop-path 0 --init $(enc diffmae $s) --seed $s
  run $R/ab_ft_augimage_diffmae/seed$s python finetune.py $U $UFT --aug-space image --init $(enc diffmae $s) --seed $s
  run $R/pretrain_crossself/seed$s python pretrain.py $U $UPT --decoder cross-self --seed $s
  run $R/ab_probe_crossself/seed$s python probe.py $U $PR --init $(enc crossself $s) --seed $s
  run $R/ab_ft_crossself/seed$s python finetune.py $U $UFT --init $(enc crossself $s) --seed $s
}

longer() {  # why pretraining does not beat scratch here (1): twice as long pretraining
  local s=$1 long="--epochs 100 --warmup-epochs 10"
  run $R/pretrain_diffmae_e100/seed$s python pretrain.py $U $UPT $long --seed $s
  run $R/pretrain_mae_e100/seed$s python pretrain.py $U $UPT $long --method mae --seed $s
  for cell in diffmae_e100 mae_e100; do
    run $R/in_probe_$cell/seed$s python probe.py $U $PR --init $(enc $cell $s) --seed $s
    run $R/in_probe_mean_$cell/seed$s python probe.py $U $PR --pool mean --init $(enc $cell $s) --seed $s
    run $R/in_ft_$cell/seed$s python finetune.py $U $UFT --init $(enc $cell $s) --seed $s
  done
}

noise() {  # why DiffMAE trails MAE here (2): more noise (A.2's rho), so fewer timesteps are solvable without the encoder
  local s=$1
  run $R/pretrain_diffmae_rho06/seed$s python pretrain.py $U $UPT --rho 0.6 --seed $s
  run $R/in_probe_diffmae_rho06/seed$s python probe.py $U $PR --init $(enc diffmae_rho06 $s) --seed $s
  run $R/in_probe_mean_diffmae_rho06/seed$s python probe.py $U $PR --pool mean --init $(enc diffmae_rho06 $s) --seed $s
  run $R/in_ft_diffmae_rho06/seed$s python finetune.py $U $UFT --init $(enc diffmae_rho06 $s) --seed $s
}

flip() {  # the skeleton flip (A.2): a true mirror (x negated, left/right joints swapped; the default) or x negated alone
  local s=$1
  run $R/flip_ft_scratch_mirror/seed$s python finetune.py $U $UFT --flip mirror --init none --seed $s
  run $R/flip_ft_scratch_xonly/seed$s python finetune.py $U $UFT --flip x-only --init none --seed $s
  run $R/flip_msr_ft_scratch_mirror/seed$s python finetune.py $M $MFT --flip mirror --init none --seed $s
  run $R/flip_msr_ft_scratch_xonly/seed$s python finetune.py $M $MFT --flip x-only --init none --seed $s
}

# Issue 23: why DiffMAE encoders fine-tune below random ones at this scale. Every cell below uses the
# default (mirror) flip, unlike the cells above. A pretraining run keeps encoder_eE.pth at a quarter, a
# half and the whole of its schedule (stats_eE.json: tools/encoder_stats.py on it; stats_e0.json: the
# random encoder of that seed).
D23="--model vit_tiny_patch16 --init none --batch-size 64 --blr 1e-3 --decoder-depth 2 --decoder-dim 128 --decoder-heads 4 --num-workers 1"
F23="--model vit_tiny_patch16 --num-workers 1"
UFT23="$F23 --epochs 20 --warmup-epochs 3"
MFT23="$F23 --epochs 50 --warmup-epochs 5 --batch-size 32"

# json_to FILE CMD...: CMD's output into FILE, renamed into place only when complete
json_to() {
  local file=$1; shift
  "$@" > "$file.tmp" && mv "$file.tmp" "$file"
}

# snapshots OUT EPOCHS SEED DATA CMD...: one pretraining run stopped at EPOCHS/4 and EPOCHS/2 (same schedule)
snapshots() {
  local out=$1 epochs=$2 seed=$3 data=$4; shift 4
  if [[ -f $out/finished ]]; then return 0; fi
  mkdir -p "$out"
  local start=$SECONDS stop
  for stop in $((epochs / 4)) $((epochs / 2)) $epochs; do
    [[ -f $out/encoder_e$stop.pth ]] && continue
    "$@" --epochs $epochs --stop-after $stop --output-dir "$out" --resume auto >> "$out/run.log" 2>&1 \
      || { echo "failed: $out (see $out/run.log)"; return 1; }
    cp "$out/encoder.pth" "$out/encoder_e$stop.pth"
    json_to "$out/stats_e$stop.json" python tools/encoder_stats.py "$out/encoder_e$stop.pth" $data --model vit_tiny_patch16
  done
  json_to "$out/stats_e0.json" python tools/encoder_stats.py none $data --model vit_tiny_patch16 --seed $seed
  touch "$out/finished"
  echo "$(date +%T) $out $((SECONDS - start)) s"
}

# signature PREFIX DATA FINETUNE EPOCHS SEED: MAE and DiffMAE pretraining (snapshots, 10% warmup), then
# fine-tuning from scratch and from each
signature() {
  local prefix=$1 data=$2 ft=$3 epochs=$4 s=$5 method
  for method in mae diffmae; do
    snapshots $R/${prefix}pt_$method/seed$s $epochs $s "$data" \
      python pretrain.py $data $D23 --warmup-epochs $((epochs / 10)) --method $method --seed $s
  done
  run $R/${prefix}ft_scratch/seed$s python finetune.py $data $ft --init none --seed $s
  for method in mae diffmae; do
    run $R/${prefix}ft_$method/seed$s python finetune.py $data $ft --init $R/${prefix}pt_$method/seed$s/encoder_e$epochs.pth --seed $s
  done
}
signature_ucla() { signature i23_ "$U" "$UFT23" 100 $1; }   # 1: NW-UCLA, 100 epochs (1500 steps)
signature_msr() { signature i23_msr_ "$M" "$MFT23" 150 $1; }  # 1: MSR Action3D, the preset's 150 epochs (600 steps)

mae_start() {  # 2: DiffMAE for the second half of NW-UCLA's run, from MAE's encoder at its half (this set's or MSR Action3D's)
  local s=$1
  local umae=$R/i23_pt_mae/seed$s/encoder_e50.pth mmae=$R/i23_msr_pt_mae/seed$s/encoder_e75.pth
  run $R/i23_ft_mae_half/seed$s python finetune.py $U $UFT23 --init $umae --seed $s
  run $R/i23_pt_diffmae_from_mae/seed$s python pretrain.py $U $D23 --epochs 50 --warmup-epochs 5 --init $umae --seed $s
  run $R/i23_ft_diffmae_from_mae/seed$s python finetune.py $U $UFT23 --init $R/i23_pt_diffmae_from_mae/seed$s/encoder.pth --seed $s
  run $R/i23_pt_diffmae_from_msr_mae/seed$s python pretrain.py $U $D23 --epochs 50 --warmup-epochs 5 --init $mmae --seed $s
  run $R/i23_ft_diffmae_from_msr_mae/seed$s python finetune.py $U $UFT23 --init $R/i23_pt_diffmae_from_msr_mae/seed$s/encoder.pth --seed $s
}

mae_start_msr() {  # 2 on MSR Action3D: DiffMAE for the second half, from MSR's own MAE encoder at its half
  local s=$1
  local mmae=$R/i23_msr_pt_mae/seed$s/encoder_e75.pth
  run $R/i23_msr_ft_mae_half/seed$s python finetune.py $M $MFT23 --init $mmae --seed $s
  run $R/i23_msr_pt_diffmae_from_mae/seed$s python pretrain.py $M $D23 --epochs 75 --warmup-epochs 8 --init $mmae --seed $s
  run $R/i23_msr_ft_diffmae_from_mae/seed$s python finetune.py $M $MFT23 --init $R/i23_msr_pt_diffmae_from_mae/seed$s/encoder.pth --seed $s
}

causes() {  # 3: one change to DiffMAE's objective at a time (NW-UCLA, the preset's 50 epochs), and layer decay 1.0
  local s=$1
  local P="python pretrain.py $U $D23 --epochs 50 --warmup-epochs 5 --seed $s"
  local -A flags=([diffmae]="" [noisier]="--min-timestep 500" [minsnr]="--loss-weight min-snr" [tapnorm]="--tap-norm own")
  for cell in diffmae noisier minsnr tapnorm; do
    run $R/i23_pt50_$cell/seed$s $P ${flags[$cell]}
    [[ -f $R/i23_pt50_$cell/seed$s/stats_e50.json ]] || json_to $R/i23_pt50_$cell/seed$s/stats_e50.json \
      python tools/encoder_stats.py $R/i23_pt50_$cell/seed$s/encoder.pth $U --model vit_tiny_patch16
    run $R/i23_ft50_$cell/seed$s python finetune.py $U $UFT23 --init $R/i23_pt50_$cell/seed$s/encoder.pth --seed $s
  done
  run $R/i23_ft50_diffmae_ld1/seed$s python finetune.py $U $UFT23 --layer-decay 1.0 --init $R/i23_pt50_diffmae/seed$s/encoder.pth --seed $s
  run $R/i23_ft_scratch_ld1/seed$s python finetune.py $U $UFT23 --layer-decay 1.0 --init none --seed $s
}

reliance() {  # how much each finished pretraining decoder needs its encoder (tools/decoder_reliance.py), seconds each
  local s=$1 folder
  for folder in $R/i23_*pt*/seed$s; do
    [[ -f $folder/finished && ! -f $folder/reliance.json ]] || continue
    json_to $folder/reliance.json python tools/decoder_reliance.py $folder/checkpoint.pth --data-root $DATA
  done
}

groups=(t1 t2 t3 t6 t8 t9 ablations longer noise flip)
i23_groups=(signature_ucla signature_msr mae_start mae_start_msr causes reliance)
case ${1:-} in
  encode) encode ;;
  all) for s in 0 1 2; do for g in "${groups[@]}"; do $g $s; done; done ;;
  preset|t1|t2|t3|t6|t8|t9|ablations|longer|noise|flip|signature_ucla|signature_msr|mae_start|mae_start_msr|causes|reliance)
    $1 "${2:?give a seed: bash tools/results.sh $1 0}" ;;
  *) echo "results.sh: expected encode, all, or one of preset ${groups[*]} ${i23_groups[*]} and a seed (got '${1:-}')" >&2; exit 2 ;;
esac
