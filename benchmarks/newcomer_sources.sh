#!/usr/bin/env bash
# The commands of docs/sources_walkthrough.md, one at a time: each source through `train` and/or
# `evaluate` on the small files of benchmarks/newcomer_sources.py (tiny model, CPU).
#
#   PYTHONPATH=. JAX_PLATFORMS=cpu benchmarks/newcomer_sources.sh DIR [STEP ...]
#
# STEP: files builtin tfds_build tfds sif sayo_parquet ... (the names below; default: all, in order; the SAYO
# runs and the evaluations start from the `sif` run). $PYTHON (default `python`) runs the commands.
# DIR/logs/<step>.log holds each command, its output, exit status and wall time.
set -u
DIR=${1:?usage: $0 DIR [STEP ...]}
shift
PY=${PYTHON:-python}
F=$DIR/files
R=$DIR/runs
mkdir -p "$DIR/logs" "$R"
SMALL=(--config.sft.steps=2 --config.grpo.steps=1 --config.data.eval_examples=2)
GRPO_ONLY=(--config.sft.steps=0 --config.grpo.steps=1 --config.data.eval_examples=2)  # SAYO has no traces
EVAL=(--config=configs/eval.py "--config.checkpoint=$R/sif" --config.data.num_examples=4 --config.max_new_tokens=32
      --config.output=)
EVAL_ALL=(--config=configs/eval.py "--config.checkpoint=$R/sif" --config.data.num_examples=0 --config.max_new_tokens=32)

step() {  # step NAME CMD...
  local name=$1
  shift
  if [ ${#STEPS[@]} -gt 0 ] && [[ ! " ${STEPS[*]} " =~ " $name " ]]; then return; fi
  local log=$DIR/logs/$name.log start rc shown="" a
  for a in "$@"; do if [[ $a =~ [\ \(\)] ]]; then shown+="\"$a\" "; else shown+="$a "; fi; done
  echo "\$ ${shown% }" | tee "$log"
  start=$(date +%s.%N)
  "$@" >>"$log" 2>&1
  rc=$?
  printf 'exit %d, %.0f s\n' "$rc" "$(echo "$(date +%s.%N) - $start" | bc)" | tee -a "$log"
}

STEPS=("$@")
step files $PY benchmarks/newcomer_sources.py "$F"
step builtin $PY -m sif_jax.train --config=configs/grpo.py:runlocal "--config.workdir=$R/builtin" "${SMALL[@]}"
step tfds_build $PY -m sif_jax.data.tfds_sif --size=tiny "--data_dir=$DIR/tfds"
step tfds $PY -m sif_jax.train --config=configs/grpo.py:runlocal "--config.data.source=tfds:$DIR/tfds" \
  "--config.workdir=$R/tfds" "${SMALL[@]}" --config.data.max_pixels=12544  # 224 px scenes -> 112 px
step sif $PY -m sif_jax.train --config=configs/grpo.py:runlocal "--config.data.source=sif_json:$F/sif/SIF-50K.json" \
  --config.data.prompt=sifthinker "--config.workdir=$R/sif" "${SMALL[@]}" \
  "--config.data.length_buckets=(320, 640)"  # two images: prompts ~276 tokens
step sayo_parquet $PY -m sif_jax.train --config=configs/grpo.py:runlocal \
  "--config.data.source=sayo:$F/sayo/sayo.parquet" --config.data.prompt=sayo --config.rewards.sayo_format=1 \
  "--config.init_checkpoint=$R/sif" "--config.workdir=$R/sayo_parquet" "${GRPO_ONLY[@]}"
step sayo_json $PY -m sif_jax.train --config=configs/grpo.py:runlocal \
  "--config.data.source=sayo:$F/sayo/sayo.json" --config.data.prompt=sayo --config.rewards.sayo_format=1 \
  "--config.init_checkpoint=$R/sif" "--config.workdir=$R/sayo_json" "${GRPO_ONLY[@]}"
step sayo448 $PY -m sif_jax.train --config=configs/grpo.py:runlocal \
  "--config.data.source=sayo:$F/sayo/sayo448.parquet" --config.data.prompt=sayo --config.rewards.sayo_format=1 \
  "--config.init_checkpoint=$R/sif" "--config.workdir=$R/sayo448" "${GRPO_ONLY[@]}" \
  "--config.data.patch_buckets=(1024,)" "--config.data.length_buckets=(384, 640)"  # 448 px: 32 x 32 patches
step tfds_local_build $PY -m sif_jax.data.tfds_sif "--local=$F/sif/SIF-50K.json" "--data_dir=$DIR/tfds_local"
step tfds_local $PY -m sif_jax.train --config=configs/grpo.py:runlocal "--config.data.source=tfds:$DIR/tfds_local" \
  "--config.workdir=$R/tfds_local" --config.sft.steps=2 --config.grpo.steps=1 \
  --config.data.eval_examples=0  # sif_local has no test split to hold out
step eval_sif $PY -m sif_jax.evaluate "${EVAL[@]}" "--config.data.source=sif_json:$F/sif/SIF-50K.json" \
  --config.data.prompt=sifthinker
step eval_gqa $PY -m sif_jax.evaluate "${EVAL[@]}" \
  "--config.data.source=gqa:$F/gqa/questions.json:$F/gqa/scene_graphs.json:$F/gqa/images"
step eval_sayo448 $PY -m sif_jax.evaluate "${EVAL[@]}" "--config.data.source=sayo:$F/sayo/sayo448.parquet" \
  --config.data.prompt=sayo
step eval_vsr $PY -m sif_jax.evaluate "${EVAL[@]}" "--config.data.source=vsr:$F/vsr/vsr.jsonl:$F/vsr/images"
step eval_vsr_bad $PY -m sif_jax.evaluate "${EVAL_ALL[@]}" "--config.output=$DIR/vsr_bad_report.json" \
  "--config.data.source=vsr:$F/vsr/vsr_with_bad_lines.jsonl:$F/vsr/images"
step eval_vsr_strict $PY -m sif_jax.evaluate "${EVAL_ALL[@]}" --config.output= --config.data.strict_records=True \
  "--config.data.source=vsr:$F/vsr/vsr_with_bad_lines.jsonl:$F/vsr/images"
step eval_whatsup_controlled $PY -m sif_jax.evaluate "${EVAL[@]}" \
  "--config.data.source=whatsup:$F/whatsup/controlled_images_dataset.json:$F/whatsup"
step eval_whatsup_coco $PY -m sif_jax.evaluate "${EVAL[@]}" \
  "--config.data.source=whatsup:$F/whatsup/coco_qa_one_obj.json:$F/whatsup"
step eval_whatsup_vg $PY -m sif_jax.evaluate "${EVAL[@]}" \
  "--config.data.source=whatsup:$F/whatsup/vg_qa_one_obj.json:$F/whatsup"
step typo_train $PY -m sif_jax.train --config=configs/grpo.py:runlocal --config.grpo.grup_size=4 --validate_only
step typo_eval $PY -m sif_jax.evaluate "${EVAL[@]}" --config.data.num_exampels=4
