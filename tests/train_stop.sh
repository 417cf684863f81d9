#!/usr/bin/env bash
# fsdp-train stopped by the cluster, checked on its printed losses:
#   1. SIGUSR1 to one rank at world size 4 stops the run within a few steps,
#      with a checkpoint and exit status 0; --resume then prints the very
#      losses the uninterrupted run printed, and --metrics-file holds them;
#   2. --time-limit stops a run with a checkpoint before the limit;
#   3. non-finite steps are skipped, never saved, and end the run past
#      --max-skipped-steps;
#   4. --stop-signals is validated.
# Usage: train_stop.sh MPIRUN FSDP_TRAIN SHARD_INSPECT WORK_DIR
set -euo pipefail
[ $# -eq 4 ] || { echo "usage: $0 MPIRUN FSDP_TRAIN SHARD_INSPECT WORK_DIR (got $# arguments)"; exit 2; }
mpirun=$1 train=$2 inspect=$3 work=$4
rm -rf "$work" && mkdir -p "$work" && cd "$work"
model=(--backend mpi --model dense --hidden 32 --layers 1 --heads 2 --intermediate 64
       --vocabulary 64 --seq-len 8 --batch 4 --log-interval 1)
losses() {  # "step N/M  loss X ..." lines -> "N X"
  sed -n 's/^step \([0-9]*\)\/[0-9]*  loss \([0-9.]*\) .*/\1 \2/p' "$1"
}
fail() { echo "FAIL: $*"; exit 1; }

# The uninterrupted run, up to step 300 of a 2000-step schedule.
"$mpirun" -np 4 "$train" "${model[@]}" --steps 2000 --stop-after 300 --checkpoint-dir whole > whole.log

# 1. The same run, signalled once it has taken 5 steps.
"$mpirun" -np 4 "$train" "${model[@]}" --steps 2000 --stop-after 300 --checkpoint-interval 0 \
  --checkpoint-dir signalled --metrics-file metrics.jsonl > signalled.log 2>&1 &
job=$!
for _ in $(seq 600); do
  grep -q "^step 5/" signalled.log 2>/dev/null && break
  sleep 0.1
done
# One rank only, not the launcher: the ranks must agree on their own.
# A rank's command line starts with fsdp-train; the launcher's with mpirun.
rank=$(pgrep -f -- "^[^ ]*fsdp-train .*--checkpoint-dir signalled" | tail -n 1)
[ -n "$rank" ] || fail "no rank process found"
kill -USR1 "$rank"
status=0
wait "$job" || status=$?
[ "$status" -eq 0 ] || { cat signalled.log; fail "the signalled run exited with $status, not 0"; }
grep -q "received SIGUSR1: stopping after this step" signalled.log || fail "no line from the signalled rank"
stopped=$(sed -n 's/^stopped after step \([0-9]*\) of 2000 (.*); resume with --resume.*/\1/p' signalled.log)
[ -n "$stopped" ] || { cat signalled.log; fail "no 'stopped after step' line"; }
[ "$stopped" -lt 300 ] || fail "the run went on to step $stopped after the signal"
grep -q "saved checkpoint at step $stopped " signalled.log || fail "no checkpoint at step $stopped"
"$mpirun" -np 4 "$train" "${model[@]}" --steps 2000 --stop-after 300 --resume \
  --checkpoint-dir signalled --metrics-file metrics.jsonl > resumed.log
diff <(losses whole.log) <(losses signalled.log | awk -v s="$stopped" '$1 <= s'; losses resumed.log) ||
  fail "the stopped and resumed run's losses differ from the uninterrupted run's"
# The metrics file: one line per step 1-300 across both runs, the printed losses.
diff <(losses whole.log) <(sed -n 's/^{"step":\([0-9]*\),"loss":\([^,]*\),.*/\1 \2/p' metrics.jsonl |
                           awk '{ printf "%d %.6f\n", $1, $2 }') ||
  fail "--metrics-file does not hold the printed losses of steps 1-300 once each"
# Every rank's peak memory, and the largest of them.
grep -q '"peak_rss_mib_max_over_ranks":[0-9.]*,"peak_rss_mib_per_rank":\[[0-9.]*,[0-9.]*,[0-9.]*,[0-9.]*\]}$' \
  <(tail -n 1 metrics.jsonl) || { tail -n 1 metrics.jsonl; fail "no per-rank peak memory of 4 ranks"; }
# An MoE model's lines carry its router losses and expert load, as printed.
"$mpirun" -np 2 "$train" --model moe --hidden 32 --layers 2 --heads 2 --intermediate 32 \
  --vocabulary 64 --seq-len 8 --batch 4 --log-interval 1 --steps 5 --no-checkpoint \
  --metrics-file moe.jsonl > moe.log
diff <(sed -n 's/^step \([0-9]*\)\/5  loss [0-9.]*  aux \([0-9.]*\)  expert load \([0-9.]*\) .*/\1 \2 \3/p' moe.log) \
     <(sed -n 's/^{"step":\([0-9]*\),"loss":[^,]*,"aux_loss":\([^,]*\),"expert_load_max_over_mean":\([^,]*\),.*/\1 \2 \3/p' moe.jsonl |
       awk '{ printf "%d %.5f %.2f\n", $1, $2, $3 }') ||
  fail "--metrics-file does not hold the printed router losses and expert loads"
[ "$(wc -l < moe.jsonl)" -eq 5 ] || fail "the MoE run's metrics file does not have 5 lines"

# 2. A time limit of 0.05 minutes (3 s) on a run that would take much longer.
start=$(date +%s)
"$mpirun" -np 2 "$train" "${model[@]}" --steps 200000 --time-limit 0.05 --checkpoint-dir limited \
  > limited.log
elapsed=$(( $(date +%s) - start ))
grep -q "stopped after step [0-9]* of 200000 (--time-limit 0.05 minutes)" limited.log ||
  { cat limited.log; fail "no time-limit stop"; }
grep -q "saved checkpoint at step" limited.log || fail "no checkpoint at the time limit"
[ "$elapsed" -lt 60 ] || fail "the time-limited run took $elapsed s"

# 3. Steps that would write NaN: a learning rate of 1e30 makes every gradient
# norm after the first step non-finite. Each such step is skipped, the fourth
# ends the run, and no checkpoint saved on the way holds a NaN or an Inf.
if "$mpirun" -np 2 "$train" "${model[@]}" --lr 1e30 --min-lr 1e30 --warmup 0 --steps 20 \
    --checkpoint-interval 1 --max-skipped-steps 3 --checkpoint-dir nan > nan.log 2>&1; then
  fail "a run of non-finite steps finished"
fi
grep -q "^step 2 skipped: gradient norm NaN is not finite; weights and optimizer state unchanged" \
  nan.log || { cat nan.log; fail "no skipped step 2"; }
grep -q "step 5: 4 steps skipped for a non-finite loss or gradient norm, more than --max-skipped-steps 3" \
  nan.log || { cat nan.log; fail "no error past --max-skipped-steps"; }
"$inspect" nan > nan-inspect.log
grep -q "step 4," nan-inspect.log || { cat nan-inspect.log; fail "the last checkpoint is not step 4"; }
if grep -q "WARNING" nan-inspect.log; then cat nan-inspect.log; fail "a checkpoint holds NaN or Inf"; fi

# 4. A signal name that does not exist.
if "$train" "${model[@]}" --stop-signals TERM,BOGUS > bogus.log 2>&1; then fail "BOGUS accepted"; fi
grep -q "unknown signal 'BOGUS'" bogus.log || { cat bogus.log; fail "no message for BOGUS"; }
echo "train stop: all checks passed (signalled run stopped after step $stopped)"
