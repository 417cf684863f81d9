#!/usr/bin/env bash
# README's "Train on your own text", end to end: scripts/prepare_data.py turns
# text files and a JSON-lines file into token files with an HF model
# directory's tokenizer, and fsdp-train fine-tunes that model on them with a
# validation loss that falls, exporting it with its tokenizer files.
# The model is the llama3 fixture with a tokenizer trained here (the
# `tokenizers` package), since no real one can be downloaded in a test.
# Usage: prepare_and_train.sh MPIRUN FSDP_TRAIN PYTHON SOURCE_DIR WORK_DIR
set -euo pipefail
[ $# -eq 5 ] || { echo "usage: $0 MPIRUN FSDP_TRAIN PYTHON SOURCE_DIR WORK_DIR (got $# arguments)"; exit 2; }
mpirun=$1 train=$2 python=$3 source=$4 work=$5
rm -rf "$work" && mkdir -p "$work" && cd "$work"
fail() { echo "FAIL: $*"; exit 1; }

mkdir model corpus
cp "$source"/tests/fixtures/hf/llama3/{config.json,generation_config.json,model.safetensors} model/
"$python" - <<'PY'
import json, random
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
random.seed(4)
numbers = "zero one two three four five six seven eight nine ten eleven twelve".split()
def document():  # counting, forwards or backwards, from a random number
    start, stride = random.randrange(len(numbers)), random.choice([1, -1])
    return " ".join(numbers[(start + stride * i) % len(numbers)] for i in range(random.randint(8, 30)))
for i in range(40):
    open(f"corpus/{i:02d}.txt", "w").write(document())
with open("corpus/more.jsonl", "w") as file:
    for i in range(60):
        file.write(json.dumps({"id": i, "text": document()}) + "\n")
tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
tokenizer.train_from_iterator([document() for _ in range(500)],
                              trainers.BpeTrainer(vocab_size=100, special_tokens=["<unk>", "</s>"]))
tokenizer.save("model/tokenizer.json")
json.dump({"eos_token": "</s>", "model_max_length": 64}, open("model/tokenizer_config.json", "w"))
PY

"$python" "$source"/scripts/prepare_data.py --tokenizer model --output data --val-fraction 0.2 \
  --seed 1 corpus/*.txt corpus/more.jsonl > prepare.log 2>&1 || { cat prepare.log; fail "prepare_data.py failed"; }
cat prepare.log
grep -Eq "^data/train.npy: [0-9]+ documents, [0-9]+ uint16 tokens$" prepare.log || fail "no train line"
grep -Eq "^data/val.npy: [0-9]+ documents, [0-9]+ uint16 tokens$" prepare.log || fail "no val line"
grep -q "EOS '</s>' = 1 after every document" prepare.log || fail "no EOS line"
# Every document ends with EOS, and the two splits hold all 100 documents.
"$python" - <<'PY' || fail "the token files do not hold the documents"
import numpy as np
train, val = np.load("data/train.npy"), np.load("data/val.npy")
assert train.dtype == np.uint16 and train.ndim == 1, train.dtype
assert train[-1] == 1 and val[-1] == 1
assert (train == 1).sum() + (val == 1).sum() == 100, ((train == 1).sum(), (val == 1).sum())
assert train.max() < 100 and 0 not in train  # no <unk>
PY

"$mpirun" -np 2 "$train" --init-from-hf model --data data/train.npy --eval-data data/val.npy \
  --eval-interval 10 --steps 20 --seq-len 24 --batch 8 --lr 3e-3 --warmup 2 --log-interval 10 \
  --no-checkpoint --export-hf exported > train.log 2>&1 || { cat train.log; fail "fsdp-train failed"; }
cat train.log
grep -q "^data: tokens, data/train.npy: " train.log || fail "no data line"
awk '/^eval step/ { loss[n++] = $5 } END { if (n != 3 || !(loss[2] < 0.8 * loss[0])) { print "eval losses", loss[0], loss[1], loss[2]; exit 1 } }' \
  train.log || fail "the validation loss did not fall by a fifth"
cmp model/tokenizer.json exported/tokenizer.json || fail "the tokenizer was not exported"
cmp model/tokenizer_config.json exported/tokenizer_config.json || fail "tokenizer_config.json not exported"
echo "prepare and train: all checks passed"
