#!/usr/bin/env bash
# fsdp-train's promises across runs, checked on their printed losses:
#   1. a run resumed from a checkpoint prints the very losses the uninterrupted
#      run printed (same world size: bitwise, as printed);
#   2. resumed at another world size, and trained from scratch at another
#      world size, the losses agree up to reduction order;
#      So do the router losses (the demo model is an MoE with its balancing
#      loss on), which are per sequence, not per rank;
#   3. the checkpoints of world sizes 2 and 3 hold the same weights within a
#      small tolerance (shard-inspect --diff, which exits 1 beyond --tol).
# Usage: train_consistency.sh MPIRUN FSDP_TRAIN SHARD_INSPECT WORK_DIR
set -euo pipefail
[ $# -eq 4 ] || { echo "usage: $0 MPIRUN FSDP_TRAIN SHARD_INSPECT WORK_DIR (got $# arguments)"; exit 2; }
mpirun=$1 train=$2 inspect=$3 work=$4
rm -rf "$work" && mkdir -p "$work" && cd "$work"
common=(--steps 16 --log-interval 1 --checkpoint-interval 8)

losses() {  # "step N/M  loss X ..." lines -> "N X"
  sed -n 's/^step \([0-9]*\)\/[0-9]*  loss \([0-9.]*\) .*/\1 \2/p' "$1"
}
aux_losses() {  # "step N/M  loss X  aux A ..." lines -> "N A"
  sed -n 's/^step \([0-9]*\)\/[0-9]*  loss [0-9.]*  aux \([0-9.]*\) .*/\1 \2/p' "$1"
}
fail() { echo "FAIL: $*"; exit 1; }

"$mpirun" -np 2 "$train" "${common[@]}" --checkpoint-dir np2 > np2.log
"$mpirun" -np 2 "$train" "${common[@]}" --stop-after 8 --checkpoint-dir half > half.log
cp -r half half-for-np3
cp -r half half-step8
"$mpirun" -np 2 "$train" "${common[@]}" --resume --checkpoint-dir half > resumed.log
"$mpirun" -np 3 "$train" "${common[@]}" --resume --checkpoint-dir half-for-np3 > resumed-np3.log
"$mpirun" -np 3 "$train" "${common[@]}" --checkpoint-dir np3 > np3.log

grep -q "resumed from .* at step 8 (saved by 2 rank(s))" resumed-np3.log || fail "no resume line"
# 1. Bitwise: steps 9-16 as printed.
diff <(losses np2.log | awk '$1 > 8') <(losses resumed.log) ||
  fail "the resumed run's losses differ from the uninterrupted run's"
[ "$(losses resumed.log | wc -l)" -eq 8 ] || fail "the resumed run did not print steps 9-16"
# 2. Up to reduction order: relative 1e-4, step by step.
compare() {  # FILE_A FILE_B WHAT, each file of "step loss" lines
  paste "$1" "$2" | awk -v what="$3" '
    $1 != $3 { print what ": step mismatch", $1, $3; bad = 1 }
    { d = $2 - $4; if (d < 0) d = -d; if (d > 1e-4 * $2) { print what ": step", $1, $2, "vs", $4; bad = 1 } }
    END { exit bad }' || fail "$3"
}
losses np2.log > np2.txt
losses np3.log > np3.txt
losses resumed-np3.log > resumed-np3.txt
awk '$1 > 8' np2.txt > np2-second-half.txt
[ "$(wc -l < np3.txt)" -eq 16 ] || fail "the world-size-3 run did not print 16 steps"
compare np2.txt np3.txt "world sizes 2 and 3 from scratch"
aux_losses np2.log > np2-aux.txt
aux_losses np3.log > np3-aux.txt
[ "$(wc -l < np3-aux.txt)" -eq 16 ] || fail "the world-size-3 run printed no router losses"
awk '$2 <= 0 { bad = 1 } END { exit bad }' np2-aux.txt || fail "a router loss of 0: the balancing loss is off"
compare np2-aux.txt np3-aux.txt "router losses at world sizes 2 and 3"
diff <(aux_losses np2.log | awk '$1 > 8') <(aux_losses resumed.log) ||
  fail "the resumed run's router losses differ from the uninterrupted run's"
compare np2-second-half.txt resumed-np3.txt "resumed at world size 3"
# 3. The weights: checkpoints of world sizes 2 and 3 agree within the tolerance...
"$inspect" --diff np3 np2 --tol 1e-4 > diff.log || { cat diff.log; fail "checkpoints differ beyond 1e-4"; }
# ... and the diff does see differences: the checkpoint at step 8 is not the one at step 16.
if "$inspect" --diff np2 half-step8 > diff-half.log; then fail "--diff found no difference between steps 8 and 16"; fi
echo "train consistency: all checks passed"
