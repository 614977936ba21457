#!/bin/bash
# The study's GPU side (RESULTS.md says how the calls were made). Earlier calls put the two GGUF
# files, concatenated and cut into 60 MiB chunks, into $LB/parts (`cp .stage/cNN/p* $LB/parts/`)
# and installed the wheels of .whl (transformers 5.24, gguf) into $LB/site.
#
#   device.sh start     assemble and check the GGUFs, convert each once into $LATENTBRIDGE_CACHE,
#                       copy the repo to $LB/repo and start run_study.py there in its own session
#                       (it outlives the call); then wait like `collect`
#   ONLY="s2g/gsm8k/2a ..." device.sh start   runs those members only
#   device.sh collect   wait up to WAIT_S for the study to end; pack its records and logs into $OUT
set -u
OUT=${OUT:-/tmp/out}; LB=${LB:-/root/lb}; WAIT_S=${WAIT_S:-540}
STEPS=${STEPS:-400}; EVAL_EVERY=${EVAL_EVERY:-100}; VAL=${VAL:-200}; TEST=${TEST:-200}
EVAL_BATCH=${EVAL_BATCH:-64}; TRAIN_BATCH=${TRAIN_BATCH:-8}; PARALLEL=${PARALLEL:-4}; DEADLINE_S=${DEADLINE_S:-1200}
export PYTHONPATH=$LB/site LATENTBRIDGE_CACHE=$LB/cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 \
  PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=2

if [ "${1:-}" = start ]; then
  # the copy here has no .git: the caller says which code this is (git rev-parse HEAD; STUDY_GIT_DIRTY=1 if dirty)
  [ -n "${STUDY_GIT_COMMIT:-}" ] || { echo "set STUDY_GIT_COMMIT (and STUDY_GIT_DIRTY=1 for uncommitted changes)"; exit 2; }
  export STUDY_GIT_COMMIT STUDY_GIT_DIRTY=${STUDY_GIT_DIRTY:-0}
  if [ ! -f "$LB/gemma3.gguf" ]; then
    cat "$LB"/parts/p0* > "$LB/all.bin"
    head -c 98362432 "$LB/all.bin" > "$LB/smollm2.gguf"; tail -c +98362433 "$LB/all.bin" > "$LB/gemma3.gguf"; rm "$LB/all.bin"
  fi
  sha256sum "$LB/smollm2.gguf" "$LB/gemma3.gguf"
  rm -rf "$LB/repo"; mkdir -p "$LB/repo"
  tar cf - --exclude=./.stage --exclude=./.whl --exclude=./.git . | tar xf - -C "$LB/repo"
  cd "$LB/repo"
  python3 -c "import transformers, torch; print('transformers', transformers.__version__, 'torch', torch.__version__)"
  for m in smollm2 gemma3; do  # convert once (refuses a character-level tokenizer); print tokens a character
    python3 -c "
from latentbridge.models import load_frozen_lm, _TOKENIZER_PROBE as p
lm = load_frozen_lm('$LB/$m.gguf'); n = len(lm.tokenizer(p, add_special_tokens=False)['input_ids'])
print('$m', n, 'tokens for', len(p), 'characters')" 2>&1 | grep -v "it/s" &
  done; wait
  setsid nohup python3 results/embedded-pair/run_study.py --out "$LB/study" --parallel "$PARALLEL" \
    --gguf smollm2-135m="$LB/smollm2.gguf" --gguf gemma3-270m="$LB/gemma3.gguf" --gsm8k-dir "$LB/repo/.carry/gsm8k" \
    --dtype bfloat16 --steps "$STEPS" --eval-every "$EVAL_EVERY" --val-questions "$VAL" --test-questions "$TEST" \
    --eval-batch-size "$EVAL_BATCH" --gsm8k-max-new-tokens 256 --synthetic-max-new-tokens 48 \
    --deadline-s "$DEADLINE_S" --first-run-estimate-s 120 --work-dir /dev/shm/lb-work ${ONLY:+--only $ONLY} \
    "train.batch_size=$TRAIN_BATCH" > "$LB/study.log" 2>&1 < /dev/null &
  echo "study started: pid $!"
fi

ended=$(( $(date +%s) + WAIT_S ))
while pgrep -f run_study.py > /dev/null && [ "$(date +%s)" -lt "$ended" ]; do sleep 10; done
pgrep -f run_study.py > /dev/null && echo "study still running" || echo "study ended"
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv
grep -h '"event"' "$LB/study.log" | tail -n 40
grep -h -i -E "error|Traceback" "$LB"/study/logs/*.log 2>/dev/null | sort | uniq -c | head -20
[ -d "$LB/study/records" ] && tar czf "$OUT/records.tgz" -C "$LB/study" records
tar czf "$OUT/logs.tgz" -C "$LB" study.log study/logs 2>/dev/null
ls -la "$OUT"
