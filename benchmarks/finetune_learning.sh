#!/usr/bin/env bash
# Does a demo fine-tune learn the classes, given more steps than the 15-minute demo affords?
#
# One fine-tune plus classification of the test split, with the library's CLI exactly as the
# workflow's `finetune` and `classify` rules call it, on the demo's own artefacts (run the demo first;
# run from the repository root). Prints the training time, the classification time and the test
# macro-F1 / accuracy (scikit-learn, labels = the dataset's class list), and the most frequent answers.
#
#   bash benchmarks/finetune_learning.sh NAME DATASET SETTING LR BATCH EPOCHS [MAX_EXAMPLES [THREADS]]
#   e.g. bash benchmarks/finetune_learning.sh proj_3ep digits ft-proj 3e-3 8 3
#
# MAX_EXAMPLES 0 (default) = the whole train split; THREADS defaults to 2. Outputs go to
# ${PP_BENCH_DIR:-/tmp/pp-finetune-learning}/NAME (model, predictions, logs); nothing under results/.
set -euo pipefail
if [ $# -lt 6 ]; then sed -n '2,13p' "$0"; exit 2; fi
name=$1 ds=$2 setting=$3 lr=$4 batch=$5 epochs=$6 max_examples=${7:-0} threads=${8:-2}
out=${PP_BENCH_DIR:-/tmp/pp-finetune-learning}/$name
# The demo's one model (config/config.yaml `models`): a folder of its results.
model=$(sed -n '/^models:/{n;s/^  \([A-Za-z0-9_-]*\):.*/\1/p;q}' config/config.yaml)
for f in results/models/$model/base/facade.json results/data/$ds/prompts_seed0.jsonl \
    results/features/$model/$ds/vision.safetensors; do
  [ -e "$f" ] || { echo "missing $f: run the demo first (bash scripts/demo.sh)" >&2; exit 1; }
done
PATH=$(pwd)/.venv/bin:$PATH
rm -rf "$out" && mkdir -p "$out"
# Everything but the arguments comes from the demo config, so these runs differ from the demo's
# fine-tunes only in what the arguments say.
read -r template warmup scheduler weight_decay grad_norm cl_batch cl_tokens < <(python -c "
import yaml; c = yaml.safe_load(open('config/config.yaml')); f = c['finetune']; k = c['classify']
m = next(iter(c['models'].values()))
print(m['template'], f['warmup_ratio'], f['lr_scheduler'], f['weight_decay'], f['max_grad_norm'],
      k['batch_size'], k['max_new_tokens'])")

start=$(date +%s)
projection-probe finetune --base-model results/models/$model/base --prompts results/data/$ds/prompts_seed0.jsonl \
  --vision-cache results/features/$model/$ds/vision.safetensors --setting "$setting" --lr "$lr" \
  --effective-batch "$batch" --per-device-batch "$batch" --epochs "$epochs" --warmup-ratio "$warmup" \
  --lr-scheduler "$scheduler" --weight-decay "$weight_decay" --max-grad-norm "$grad_norm" --seed 0 --checkpoint-every-steps 0 --max-examples "$max_examples" \
  --template "$template" --threads "$threads" --out-dir "$out/model" > "$out/finetune.log" 2>&1
mid=$(date +%s)
projection-probe classify --model "$out/model" --prompts results/data/$ds/prompts_seed0.jsonl \
  --vision-cache results/features/$model/$ds/vision.safetensors --classes results/data/$ds/classes.json --mode generate \
  --batch-size "$cl_batch" --max-new-tokens "$cl_tokens" --temperature 0 --seed 0 --device cpu --dtype float32 --threads "$threads" \
  --out "$out/predictions.csv" > "$out/classify.log" 2>&1
end=$(date +%s)

python - "$out/predictions.csv" "results/data/$ds/classes.json" <<'PY'
import collections, json, sys
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score
rows = pd.read_csv(sys.argv[1], keep_default_na=False)
classes = json.load(open(sys.argv[2]))["classes"]
print(f"macro-F1 {f1_score(rows.label, rows.parsed, labels=classes, average='macro'):.3f}  "
      f"accuracy {accuracy_score(rows.label, rows.parsed):.3f}  invalid {1 - rows.valid.astype(str).eq('True').mean():.2f}  "
      f"answers {collections.Counter(rows.parsed).most_common(4)}")
PY
echo "$name: $ds $setting lr=$lr batch=$batch epochs=$epochs max_examples=$max_examples threads=$threads" \
     "finetune $((mid - start)) s, classify $((end - mid)) s; $(grep -o "'train_loss': '[0-9.]*'" "$out/finetune.log")"
