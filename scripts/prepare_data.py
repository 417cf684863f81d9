#!/usr/bin/env python3
"""Text -> token files for fsdp-train (--data, --eval-data).

    scripts/prepare_data.py --tokenizer MODEL_DIR --output data corpus/*.txt
    scripts/prepare_data.py --tokenizer MODEL_DIR --output data docs.jsonl --text-field text

MODEL_DIR is a HuggingFace model directory with a tokenizer.json (the fast
tokenizer every current model ships). Each input is one document: a text file
(.txt or anything else), or, for a JSON-lines file (.jsonl), each line's
--text-field. Documents are tokenised without the tokenizer's own special
tokens (unless --add-special-tokens), each followed by the EOS token, so that
the model sees where one ends and the next begins. A --val-fraction of the
documents, chosen with --seed, goes to val.npy, the rest to train.npy:
1-D NumPy arrays of uint16 token ids when the vocabulary fits, else uint32.

It needs the `tokenizers` and `numpy` packages from PyPI: when the Python
running it lacks them, it creates a virtual environment (--venv) with them and
runs itself there.
"""
import argparse
import json
import os
import random
import sys
import tempfile

from venv_rerun import rerun_in_venv

DEFAULT_VENV = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                            "fsdp-runtime", "prepare-data-venv")
BATCH_DOCUMENTS = 256  # documents tokenised per call (the tokenizer parallelises a batch)


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("inputs", nargs="+", help="text files, or .jsonl files")
    parser.add_argument("--tokenizer", required=True,
                        help="HF model directory holding tokenizer.json (or the file itself)")
    parser.add_argument("--output", required=True, help="directory for train.npy and val.npy")
    parser.add_argument("--text-field", default="text", help="field of each .jsonl line")
    parser.add_argument("--val-fraction", type=float, default=0.05,
                        help="fraction of the documents for val.npy (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    parser.add_argument("--eos-token", default=None,
                        help="the separator token, e.g. '</s>' (default: tokenizer_config.json's "
                             "eos_token, else config.json's eos_token_id)")
    parser.add_argument("--add-special-tokens", action="store_true",
                        help="let the tokenizer add its own special tokens (a BOS, say) to each "
                             "document")
    parser.add_argument("--venv", default=DEFAULT_VENV,
                        help="virtual environment to create when tokenizers/numpy are missing")
    return parser.parse_args()


def ensure_packages(arguments):
    """Re-runs this script in a virtual environment with tokenizers and numpy, if needed."""
    rerun_in_venv(__file__, arguments.venv, ["tokenizers", "numpy"], ["tokenizers", "numpy"],
                  "FSDP_PREPARE_DATA_IN_VENV", "prepare_data")


def tokenizer_paths(location):
    if os.path.isdir(location):
        return os.path.join(location, "tokenizer.json"), location
    return location, os.path.dirname(os.path.abspath(location))


def eos_id(tokenizer, directory, explicit):
    """The EOS token's id: the one asked for, else the model directory's."""
    name = explicit
    if name is None:
        config_path = os.path.join(directory, "tokenizer_config.json")
        if os.path.exists(config_path):
            with open(config_path) as file:
                configured = json.load(file).get("eos_token")
            name = configured.get("content") if isinstance(configured, dict) else configured
    if name is not None:
        found = tokenizer.token_to_id(name)
        if found is None:
            sys.exit(f"prepare_data: the EOS token {name!r} is not in the tokenizer's vocabulary")
        return found, name
    config_path = os.path.join(directory, "config.json")
    if os.path.exists(config_path):
        with open(config_path) as file:
            configured = json.load(file).get("eos_token_id")
        if isinstance(configured, list):
            configured = configured[0] if configured else None
        if isinstance(configured, int):
            return configured, tokenizer.id_to_token(configured)
    sys.exit(f"prepare_data: no EOS token: {directory} has no tokenizer_config.json eos_token "
             "nor config.json eos_token_id; give --eos-token")


def documents(paths, text_field):
    """(source, text) for every document of the inputs, in order."""
    for path in paths:
        if path.endswith(".jsonl"):
            with open(path, encoding="utf-8") as file:
                for number, line in enumerate(file, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as error:
                        sys.exit(f"prepare_data: {path}:{number}: not JSON ({error.msg})")
                    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                        sys.exit(f"prepare_data: {path}:{number}: no string field "
                                 f"{text_field!r} (--text-field)")
                    yield f"{path}:{number}", record[text_field]
        else:
            with open(path, encoding="utf-8") as file:
                yield path, file.read()


class TokenWriter:
    """Streams token ids to a temporary raw file, then writes the .npy: constant memory."""

    def __init__(self, path, dtype):
        import numpy
        self.path, self.dtype, self.numpy = path, dtype, numpy
        self.raw = tempfile.NamedTemporaryFile(dir=os.path.dirname(path), suffix=".tmp")
        self.tokens = self.documents = 0

    def add(self, ids):
        self.numpy.asarray(ids, dtype=self.dtype).tofile(self.raw)
        self.tokens += len(ids)
        self.documents += 1

    def finish(self):
        from numpy.lib import format as npy
        self.raw.flush()
        self.raw.seek(0)
        header = {"descr": npy.dtype_to_descr(self.numpy.dtype(self.dtype)),
                  "fortran_order": False, "shape": (self.tokens,)}
        partial = self.path + ".partial"
        with open(partial, "wb") as out:
            npy.write_array_header_1_0(out, header)  # holds any 1-D shape
            while True:
                block = self.raw.read(1 << 24)
                if not block:
                    break
                out.write(block)
        os.replace(partial, self.path)  # never a half-written token file under the final name
        self.raw.close()


def main():
    arguments = parse_arguments()
    if not 0 <= arguments.val_fraction < 1:
        sys.exit(f"prepare_data: --val-fraction {arguments.val_fraction} (expected 0 <= f < 1)")
    for path in arguments.inputs:
        if not os.path.isfile(path):
            sys.exit(f"prepare_data: {path}: no such file")
    ensure_packages(arguments)
    from tokenizers import Tokenizer

    tokenizer_file, directory = tokenizer_paths(arguments.tokenizer)
    if not os.path.isfile(tokenizer_file):
        sys.exit(f"prepare_data: {tokenizer_file}: no such file (a fast tokenizer's "
                 "tokenizer.json is needed)")
    tokenizer = Tokenizer.from_file(tokenizer_file)
    vocabulary = tokenizer.get_vocab_size(with_added_tokens=True)
    eos, eos_name = eos_id(tokenizer, directory, arguments.eos_token)
    dtype = "uint16" if vocabulary <= 1 << 16 else "uint32"
    config_path = os.path.join(directory, "config.json")
    if os.path.exists(config_path):
        with open(config_path) as file:
            model_vocabulary = json.load(file).get("vocab_size")
        if isinstance(model_vocabulary, int) and vocabulary > model_vocabulary:
            sys.exit(f"prepare_data: the tokenizer has {vocabulary} tokens but {config_path} says "
                     f"vocab_size {model_vocabulary}: ids past it would not fit the model")

    os.makedirs(arguments.output, exist_ok=True)
    writers = {"train": TokenWriter(os.path.join(arguments.output, "train.npy"), dtype),
               "val": TokenWriter(os.path.join(arguments.output, "val.npy"), dtype)}
    chooser = random.Random(arguments.seed)
    batch = []  # (split, text) of documents not yet tokenised

    def flush():
        encodings = tokenizer.encode_batch([text for _, text in batch],
                                           add_special_tokens=arguments.add_special_tokens)
        for (split, _), encoding in zip(batch, encodings):
            writers[split].add(encoding.ids + [eos])
        batch.clear()

    for _, text in documents(arguments.inputs, arguments.text_field):
        batch.append(("val" if chooser.random() < arguments.val_fraction else "train", text))
        if len(batch) == BATCH_DOCUMENTS:
            flush()
    if batch:
        flush()

    if writers["train"].documents == 0:
        sys.exit("prepare_data: no document went to train.npy (no inputs, or --val-fraction "
                 "took them all)")
    for name, writer in writers.items():
        if name == "val" and writer.documents == 0:
            writer.raw.close()
            continue
        writer.finish()
        print(f"{writer.path}: {writer.documents} documents, {writer.tokens} {dtype} tokens")
    print(f"tokenizer: {tokenizer_file}, vocabulary {vocabulary}, EOS {eos_name!r} = {eos} "
          "after every document")
    if writers["val"].documents == 0:
        print("no document went to val.npy (raise --val-fraction for a validation set)")


if __name__ == "__main__":
    main()
