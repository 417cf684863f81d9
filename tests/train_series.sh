#!/usr/bin/env bash
# A series of checkpoints (--keep-checkpoints), checked through the programs:
#   1. K = 3 with an interval of 10 over 100 steps leaves exactly steps 80,
#      90 and 100, and --keep-every 25 keeps 50 and 100 too;
#   2. --resume takes the latest and prints the uninterrupted run's losses;
#      --resume-from takes the step asked for; shard-inspect lists the series;
#   3. SIGKILL of the whole job at random moments while it saves every step:
#      'latest' always names a complete checkpoint, which shard-inspect reads
#      (every block's checksum) and the next run resumes from; the metrics
#      file holds every step once.
# Usage: train_series.sh MPIRUN FSDP_TRAIN SHARD_INSPECT WORK_DIR [KILLS]
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: $0 MPIRUN FSDP_TRAIN SHARD_INSPECT WORK_DIR [KILLS]"; exit 2; }
mpirun=$1 train=$2 inspect=$3 work=$4 kills=${5:-20}
rm -rf "$work" && mkdir -p "$work" && cd "$work"
model=(--backend mpi --model dense --hidden 32 --layers 1 --heads 2 --intermediate 64
       --vocabulary 64 --seq-len 8 --batch 2 --log-interval 1)
losses() { sed -n 's/^step \([0-9]*\)\/[0-9]*  loss \([0-9.]*\) .*/\1 \2/p' "$1"; }
fail() { echo "FAIL: $*"; exit 1; }
steps_in() { (cd "$1" && ls -d step-* | tr '\n' ' '); }

# 1. Retention.
"$mpirun" -np 2 "$train" "${model[@]}" --steps 100 --checkpoint-interval 10 \
  --keep-checkpoints 3 --checkpoint-dir kept > kept.log
[ "$(steps_in kept)" = "step-00000080 step-00000090 step-00000100 " ] ||
  fail "K=3 kept $(steps_in kept)"
[ "$(cat kept/latest)" = "step-00000100" ] || fail "latest is $(cat kept/latest)"
"$mpirun" -np 2 "$train" "${model[@]}" --steps 100 --checkpoint-interval 10 \
  --keep-checkpoints 3 --keep-every 25 --checkpoint-dir every > every.log
[ "$(steps_in every)" = "step-00000050 step-00000080 step-00000090 step-00000100 " ] ||
  fail "K=3, M=25 kept $(steps_in every)"

# 2. Resuming a series: the latest, or the step asked for.
"$mpirun" -np 2 "$train" "${model[@]}" --steps 100 --stop-after 60 --checkpoint-interval 20 \
  --keep-checkpoints 2 --checkpoint-dir half > half.log
"$mpirun" -np 2 "$train" "${model[@]}" --steps 100 --checkpoint-interval 20 \
  --keep-checkpoints 2 --resume --checkpoint-dir half > resumed.log
grep -q "resumed from half/step-00000060 at step 60" resumed.log || fail "did not resume the latest"
diff <(losses kept.log | awk '$1 > 60') <(losses resumed.log) ||
  fail "the resumed series' losses differ from the uninterrupted run's"
"$mpirun" -np 2 "$train" "${model[@]}" --steps 100 --checkpoint-interval 20 \
  --keep-checkpoints 2 --resume-from 80 --checkpoint-dir half > from80.log
grep -q "resumed from half/step-00000080 at step 80" from80.log || fail "--resume-from 80"
"$inspect" half > inspect.log
grep -q "series of checkpoints: steps 80, 100; showing the latest, step-00000100" inspect.log ||
  { cat inspect.log; fail "shard-inspect does not list the series"; }
# A single-checkpoint run must not take a series over.
if "$mpirun" -np 2 "$train" "${model[@]}" --steps 5 --checkpoint-dir half > single.log 2>&1; then
  fail "a run without --keep-checkpoints saved into a series"
fi
grep -q "holds a series of checkpoints" single.log || { cat single.log; fail "no series message"; }

# 3. Kills during saves (a save every step, a tiny model: most of the time is saving).
for i in $(seq "$kills"); do
  resume=()
  [ -f killed/latest ] && resume=(--resume)
  # A fresh run refuses an existing metrics file (killed before its first save).
  [ -f killed/latest ] || rm -f killed.jsonl
  "$mpirun" -np 2 "$train" "${model[@]}" --steps 100000 --checkpoint-interval 1 \
    --keep-checkpoints 2 "${resume[@]}" --checkpoint-dir killed --metrics-file killed.jsonl \
    > "kill-$i.log" 2>&1 &
  job=$!
  sleep "$(awk -v seed="$i" 'BEGIN { srand(seed); printf "%.2f", 1.5 + 2.5 * rand() }')"
  pkill -9 -f -- "--checkpoint-dir killed" || true
  wait "$job" 2>/dev/null || true
  if [ -f killed/latest ]; then
    "$inspect" killed > "inspect-$i.log" 2>&1 ||
      { cat "kill-$i.log" "inspect-$i.log"; fail "kill $i: latest ($(cat killed/latest)) is not readable"; }
  fi
done
[ -f killed/latest ] || fail "no checkpoint was ever completed in $kills runs"
"$mpirun" -np 2 "$train" "${model[@]}" --steps 100000 --stop-after "$(( $(sed 's/step-0*//' killed/latest) + 2 ))" \
  --checkpoint-interval 1 --keep-checkpoints 2 --resume --checkpoint-dir killed > final.log ||
  { cat final.log; fail "the run after the kills did not resume"; }
# Each resumed run dropped the metrics of the steps it took again: no step twice.
sed -n 's/^{"step":\([0-9]*\),.*/\1/p' killed.jsonl |
  awk 'NR > 1 && $1 != previous + 1 { print "step", $1, "after", previous; bad = 1 }
       { previous = $1 } END { exit bad }' || fail "killed.jsonl repeats or skips steps"
echo "train series: all checks passed ($kills kills, last at $(cat killed/latest))"
