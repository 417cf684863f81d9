"""Writes the seed corpus of the fuzz targets (tests/fuzz/corpus/<target>/seed-*).

Run from the repository root with a Python that has safetensors and numpy
(scripts/setup.sh makes build/python):
    build/python/bin/python tests/fuzz/make_seeds.py CHECKPOINT_DIR
CHECKPOINT_DIR: a small checkpoint saved by fsdp-train (its index.json is a
seed as it is). Valid inputs come from the reference writers; the malformed
ones are the cases the readers were once wrong about (issue #16). Inputs the
fuzzers found failing are kept beside the seeds as crash-*, never rewritten.
"""
import json
import pathlib
import struct
import sys

import numpy as np
from safetensors.numpy import save

corpus = pathlib.Path(__file__).parent / "corpus"


def write(target, name, data):
    path = corpus / target / ("seed-" + name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def framed(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


# --- safetensors files ---------------------------------------------------------
write("safetensors_header", "reference-writer", save(
    {"model.embed_tokens.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
     "model.norm.weight": np.ones(4, dtype=np.float16),
     "lm_head.bias": np.zeros(0, dtype=np.int64),
     "flag": np.array([True, False])},
    metadata={"format": "pt"}))
write("safetensors_header", "rank-file-like", save(
    {"stage.0/weight_shard": np.zeros(5, dtype=np.float32),
     "stage.0/exp_avg": np.zeros(5, dtype=np.float32),
     "stage.0/exp_avg_sq": np.zeros(5, dtype=np.float32)},
    metadata={"format": "fsdp-runtime-checkpoint", "rank": "1", "world_size": "2"}))
write("safetensors_header", "empty-header", framed(b"{}"))
write("safetensors_header", "deep-nesting", framed(b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}"))
write("safetensors_header", "nul-then-garbage", framed(b"{}\0garbage"))
write("safetensors_header", "overlapping", framed(json.dumps(
    {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
     "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode(), b"\0" * 12))
write("safetensors_header", "huge-shape", framed(json.dumps(
    {"a": {"dtype": "F64", "shape": [2**62, 4], "data_offsets": [0, 8]}}).encode(), b"\0" * 8))
write("safetensors_header", "length-too-long", struct.pack("<Q", 2**63) + b"{}")

# --- distributed checkpoint index ----------------------------------------------
index_text = (pathlib.Path(sys.argv[1]) / "index.json").read_text()
write("checkpoint_index", "saved", index_text)
index = json.loads(index_text)
swapped = json.loads(index_text)
swapped["files"].reverse()
write("checkpoint_index", "files-swapped", json.dumps(swapped))
traversal = json.loads(index_text)
traversal["files"][0]["name"] = "../elsewhere/" + traversal["files"][0]["name"]
write("checkpoint_index", "traversal", json.dumps(traversal))
for field, value in [("world_size", 4294967299), ("step", 2**63 - 1), ("optimizer_steps", -1)]:
    bad = json.loads(index_text)
    bad[field] = value
    write("checkpoint_index", "number-" + field, json.dumps(bad))
bad = json.loads(index_text)
bad["stages"][0]["unpadded_numel"] = -1
write("checkpoint_index", "number-unpadded-numel", json.dumps(bad))

# --- HF index --------------------------------------------------------------------
weight_map = {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
              "model.layers.0.mlp.down_proj.weight": "model-00001-of-00002.safetensors",
              "lm_head.weight": "model-00002-of-00002.safetensors"}
write("hf_index", "transformers", json.dumps(
    {"metadata": {"total_size": 1234}, "weight_map": weight_map}, indent=2))
write("hf_index", "traversal", json.dumps(
    {"weight_map": {"a": "../../x.safetensors", "b": "/etc/passwd", "c": ".."}}))
write("hf_index", "not-a-string", json.dumps({"weight_map": {"a": 7, "b": ["x"]}}))
