#!/usr/bin/env bash
# fsdp-train on token files (written by NumPy itself), checked on its printed
# losses:
#   1. world sizes 1-4 and 2 micro-batches train on the same batches: the same
#      losses and validation losses, up to reduction order; the validation
#      loss falls;
#   2. a directory of raw .bin files holding the same token stream trains
#      exactly as the one .npy file does;
#   3. a run resumed mid-epoch (the batches cross epoch boundaries) prints the
#      uninterrupted run's losses and validation losses, bitwise as printed;
#      at another world size, up to reduction order; with other data, refused;
#   4. bad data stops the job before training, once, with exit status 2 and a
#      message naming the file and the problem.
# Usage: train_data.sh MPIRUN FSDP_TRAIN PYTHON WORK_DIR
set -euo pipefail
[ $# -eq 4 ] || { echo "usage: $0 MPIRUN FSDP_TRAIN PYTHON WORK_DIR (got $# arguments)"; exit 2; }
mpirun=$1 train=$2 python=$3 work=$4
rm -rf "$work" && mkdir -p "$work" && cd "$work"
fail() { echo "FAIL: $*"; exit 1; }

# Documents of arithmetic sequences (learnable in context), 0 between them:
# 31 windows of 33 tokens and a remainder, so epochs end mid-batch.
"$python" - <<'PY'
import numpy as np
rng = np.random.default_rng(3)
def stream(n):
    tokens = []
    while len(tokens) < n:
        start, stride = rng.integers(1, 64), rng.choice([1, 2, 3, 5])
        tokens += [int((start + stride * i) % 63 + 1) for i in range(rng.integers(20, 60))] + [0]
    return np.array(tokens[:n])
train = stream(31 * 33 + 7)
np.save("train.npy", train.astype(np.uint16))
np.save("val.npy", stream(20 * 33 + 3).astype(np.int32))
import os
os.makedirs("parts")
for i, part in enumerate(np.array_split(train, 3)):   # the same stream, in 3 raw files
    part.astype(np.uint32).tofile(f"parts/part-{i}.bin")
bad = train.copy(); bad[777] = 64
np.save("bad.npy", bad.astype(np.uint16))
np.save("short.npy", np.arange(20, dtype=np.int64))
np.save("float.npy", np.ones(100, dtype=np.float32))
os.makedirs("empty"); open("empty/notes.txt", "w").write("no tokens here")
PY

model=(--model dense --hidden 64 --layers 2 --heads 2 --intermediate 96 --vocabulary 64
       --seq-len 32 --batch 12 --steps 12 --log-interval 1 --lr 1e-2 --warmup 2)
data=(--data train.npy --eval-data val.npy --eval-interval 4)

run() {  # run LOG COMMAND...: must exit 0
  local log=$1; shift
  "$@" > "$log" 2>&1 || { cat "$log"; fail "exit status $? from: $*"; }
}
losses() { sed -n 's/^step \([0-9]*\)\/[0-9]*  loss \([0-9.]*\) .*/\1 \2/p' "$1"; }
evals() { sed -n 's/^eval step \([0-9]*\) loss \([0-9.]*\) .*/\1 \2/p' "$1"; }
compare() {  # FILE_A FILE_B WHAT: "step value" lines equal to relative 1e-4 (files, read twice)
  [ -s "$1" ] || fail "$3: $1 is empty"
  [ "$(wc -l < "$1")" -eq "$(wc -l < "$2")" ] || fail "$3: $(wc -l < "$1") lines against $(wc -l < "$2")"
  paste "$1" "$2" | awk -v what="$3" '
    $1 != $3 { print what ": step mismatch", $1, $3; bad = 1 }
    { d = $2 - $4; if (d < 0) d = -d; if (d > 1e-4 * $2) { print what ": step", $1, $2, "vs", $4; bad = 1 } }
    END { exit bad }' || fail "$3"
}

# 1. Every world size, and micro-batches.
for ranks in 1 2 3 4; do
  run np$ranks.log "$mpirun" -np $ranks "$train" "${model[@]}" "${data[@]}" --no-checkpoint
  losses np$ranks.log > np$ranks.losses
  evals np$ranks.log > np$ranks.evals
done
grep -q "^data: tokens, train.npy: 1,030 uint16 tokens, 31 windows of 33 (4.65 epochs in 12 steps" np2.log ||
  { cat np2.log; fail "no data line"; }
grep -q "^eval: val.npy: 663 int32 tokens, 20 windows of 33, every 4 steps" np2.log || fail "no eval line"
[ "$(losses np1.log | wc -l)" -eq 12 ] || fail "world size 1 did not print 12 steps"
[ "$(evals np1.log | cut -d' ' -f1 | tr '\n' ' ')" = "0 4 8 12 " ] || fail "evaluations not at steps 0, 4, 8, 12"
for ranks in 2 3 4; do
  compare np1.losses np$ranks.losses "losses at world sizes 1 and $ranks"
  compare np1.evals np$ranks.evals "validation losses at world sizes 1 and $ranks"
done
run micro.log "$mpirun" -np 2 "$train" "${model[@]}" "${data[@]}" --no-checkpoint --micro-batches 3
losses micro.log > micro.losses
evals micro.log > micro.evals
compare np2.losses micro.losses "2 ranks with 1 and with 3 micro-batches"
compare np2.evals micro.evals "validation with 1 and with 3 micro-batches"
awk 'NR == 1 { first = $2 } END { if (!($2 < 0.9 * first)) { print "validation loss", first, "->", $2; exit 1 } }' \
  np1.evals || fail "the validation loss did not fall"
grep -q "^eval loss [0-9.]* -> [0-9.]*$" np1.log || fail "no validation loss in the summary"

# 2. The same stream as a directory of raw files: the very same run.
run parts.log "$mpirun" -np 2 "$train" "${model[@]}" --data parts --data-dtype uint32 \
  --eval-data val.npy --eval-interval 4 --no-checkpoint
grep -q "^data: tokens, 3 file(s) in parts: 1,030 uint32 tokens, 31 windows" parts.log || fail "no parts line"
diff np2.losses <(losses parts.log) || fail "raw parts train differently from the .npy file"

# 3. Resume mid-epoch (step 5 ends inside the second epoch) at 2 and 3 ranks.
run full.log "$mpirun" -np 2 "$train" "${model[@]}" "${data[@]}" --checkpoint-dir full
run half.log "$mpirun" -np 2 "$train" "${model[@]}" "${data[@]}" --checkpoint-dir half --stop-after 5
cp -r half half-np3
run resumed.log "$mpirun" -np 2 "$train" "${model[@]}" "${data[@]}" --checkpoint-dir half --resume
grep -q "^eval step 5 loss" resumed.log || fail "the resumed run did not evaluate where it started"
diff <(losses full.log | awk '$1 > 5') <(losses resumed.log) || fail "resumed losses differ"
diff <(evals full.log | awk '$1 > 5') <(evals resumed.log | awk '$1 > 5') ||
  fail "resumed validation losses differ"
run resumed-np3.log "$mpirun" -np 3 "$train" "${model[@]}" "${data[@]}" --checkpoint-dir half-np3 --resume
losses full.log | awk '$1 > 5' > full-second-part.losses
losses resumed-np3.log > resumed-np3.losses
compare full-second-part.losses resumed-np3.losses "resumed at world size 3"
status=0
"$mpirun" -np 2 "$train" "${model[@]}" --data val.npy --checkpoint-dir half --resume > other.log 2>&1 || status=$?
[ "$status" -eq 2 ] || { cat other.log; fail "resuming on other data: exit status $status"; }
grep -q "data: tokens .*train.npy.* in the checkpoint, tokens .*val.npy.* here" other.log ||
  { cat other.log; fail "resuming on other data: no reason given"; }

# 4. Bad data: exit status 2, the message once, no step taken.
refused() {  # refused REGEX ARGS...: fsdp-train ARGS at 3 ranks is refused with REGEX once
  local regex=$1; shift
  local status=0
  "$mpirun" -np 3 "$train" "${model[@]}" --no-checkpoint "$@" > refused.log 2>&1 || status=$?
  [ "$status" -eq 2 ] || { cat refused.log; fail "$*: exit status $status, expected 2"; }
  [ "$(grep -Ec -- "$regex" refused.log)" -eq 1 ] || { cat refused.log; fail "$*: not once: $regex"; }
  if grep -q "^step 1/" refused.log; then fail "$*: trained"; fi
}
refused "--data: .*bad.npy: token 777 \(counting from 0\) is 64, outside the model's vocabulary of 64" --data bad.npy
refused "--eval-data: .*bad.npy: token 777 .* is 64" --data train.npy --eval-data bad.npy
refused "--eval-data: short.npy: 20 tokens, fewer than one window of 33 \(--seq-len 32 \+ 1" --eval-data short.npy
refused "--data: float.npy: dtype '<f4' is not a token dtype" --data float.npy
refused "--data: empty: a directory with no token files" --data empty
refused "--data: parts/part-0.bin: a raw token file needs its dtype \(--data-dtype" --data parts
refused "--data: absent.npy: no such file or directory" --data absent.npy
refused "--data-dtype float16 \(expected uint16, uint32, int32 or int64\)" --data parts --data-dtype float16
refused "--eval-interval 5 needs --eval-data" --eval-interval 5
echo "train data: all checks passed"
