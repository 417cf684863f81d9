#!/usr/bin/env bash
# README's walkthrough, command by command, with fewer steps: each must exit
# as README says and print what README promises.
# Usage: readme_walkthrough.sh MPIRUN FSDP_TRAIN SHARD_INSPECT FSDP_BENCH PYTHON WORK_DIR
set -euo pipefail
[ $# -eq 6 ] || { echo "usage: $0 MPIRUN FSDP_TRAIN SHARD_INSPECT FSDP_BENCH PYTHON WORK_DIR (got $# arguments)"; exit 2; }
mpirun=$1 train=$2 inspect=$3 bench=$4 python=$5 work=$6
rm -rf "$work" && mkdir -p "$work" && cd "$work"
fail() { echo "FAIL: $*"; exit 1; }
run() {  # run LOG COMMAND...: prints the command, keeps its output in LOG
  local log=$1; shift
  echo "+ $*"
  local status=0
  "$@" > "$log" 2>&1 || status=$?
  [ "$status" -eq 0 ] || { cat "$log"; fail "exit status $status from: $*"; }
}
expect() {  # expect LOG REGEX
  grep -Eq -- "$2" "$1" || { cat "$1"; fail "$1 lacks: $2"; }
}

# 2. Train: the demo, with fewer steps (it saves in ./fsdp-train-checkpoint).
run demo.log "$mpirun" -np 4 "$train" --steps 20 --checkpoint-interval 10
expect demo.log "^step 20/20  loss "
expect demo.log "saved checkpoint at step 10 to fsdp-train-checkpoint"
expect demo.log "saved checkpoint at step 20 to fsdp-train-checkpoint"
expect demo.log "^done: steps 1-20 "
run help.log "$mpirun" -np 2 "$train" --help
expect help.log "--stop-after"

# 3. Inspect what it saved.
run table.log "$inspect" fsdp-train-checkpoint
expect table.log "decoder.0.mlp.experts.gate_up_proj"
expect table.log "embedding.weight"
run param.log "$inspect" fsdp-train-checkpoint --param decoder.0.mlp.router.weight --slice 0,:4
run where.log "$inspect" fsdp-train-checkpoint --where decoder.0.mlp.experts.gate_up_proj
expect where.log "rank-0000[0-3]-of-00004.safetensors"
run json.log "$inspect" fsdp-train-checkpoint --filter '*experts*' --json
"$python" -c 'import json, sys; json.load(open(sys.argv[1]))' json.log || fail "--json is not JSON"
expect json.log "gate_up_proj"
if grep -q '"embedding.weight"' json.log; then fail "--filter '*experts*' kept embedding.weight"; fi

# 4. Stop and resume at another world size.
run stop.log "$mpirun" -np 4 "$train" --steps 30 --checkpoint-dir run --stop-after 15
expect stop.log "saved checkpoint at step 15 to run"
expect stop.log "^done: steps 1-15 "
run resume.log "$mpirun" -np 2 "$train" --steps 30 --checkpoint-dir run --resume
expect resume.log "resumed from .*run at step 15 \(saved by 4 rank\(s\)\)"
expect resume.log "^step 30/30  loss "
# ... refused with other settings, allowed (and said) with more steps.
if "$mpirun" -np 2 "$train" --steps 30 --checkpoint-dir run --resume --lr 1e-3 > refused.log 2>&1; then
  fail "--resume with another --lr was accepted"
fi
expect refused.log "learning_rate: 0.003 in the checkpoint, 0.001 here"
cp -r run run-longer
run longer.log "$mpirun" -np 2 "$train" --steps 32 --checkpoint-dir run-longer --resume
expect longer.log "note: the learning-rate schedule now spans 32 steps"

# ... and on a cluster: a series of checkpoints under a time limit.
run series.log "$mpirun" -np 4 "$train" --steps 30 --checkpoint-dir series --keep-checkpoints 3 \
  --checkpoint-interval 5 --time-limit 230
expect series.log "saved checkpoint at step 30 to series/step-00000030 .*; kept steps 20, 25, 30"
[ "$(cat series/latest)" = "step-00000030" ] || fail "series/latest is $(cat series/latest)"

# 5. Export, and check the export against the checkpoint.
run export.log "$mpirun" -np 4 "$train" --steps 30 --checkpoint-dir run --resume --export-hf hf-model
expect export.log "nothing to train"
expect export.log "exported the model as mixtral \\(float32\\) to hf-model"
[ -f hf-model/model.safetensors ] || [ -f hf-model/model.safetensors.index.json ] || fail "no HF files"
run diff-hf.log "$inspect" run --diff hf-model
expect diff-hf.log "^0 of 31 parameters differ beyond tol 0"

# 6. Start from the HF directory; inspect it.
run from-hf.log "$mpirun" -np 3 "$train" --init-from-hf hf-model --checkpoint-dir from-hf --steps 5
expect from-hf.log "initialised from hf-model"
expect from-hf.log "^done: steps 1-5 "
run hf-table.log "$inspect" hf-model --filter 'model.layers.0.*'
expect hf-table.log "model.layers.0.self_attn"

# 8. Benchmarks.
run bench.log "$bench" --help

echo "README walkthrough: every command ran as described"
