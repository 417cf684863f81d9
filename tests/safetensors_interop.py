"""Interop with the reference `safetensors` package, both directions.

Files written by the package (every dtype numpy has, empty and scalar
tensors, metadata) are read by this project's reader and rewritten by its
writer (safetensors_copy); the package must read the rewritten file back
equal, and its header must be padded to 8 bytes as the package pads it.
A file the package would reject (overlapping tensors) must be rejected by
our reader too. Usage: python safetensors_interop.py SAFETENSORS_COPY WORKDIR
"""
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

copy_tool, workdir = sys.argv[1], Path(sys.argv[2])
workdir.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
tensors = {
    "model.embed_tokens.weight": rng.standard_normal((7, 5)).astype(np.float32),
    "halves": rng.standard_normal((3, 2, 2)).astype(np.float16),
    "doubles": rng.standard_normal(4).astype(np.float64),
    "int64": np.arange(-3, 3, dtype=np.int64),
    "int32": np.arange(9, dtype=np.int32).reshape(3, 3),
    "int16": np.arange(5, dtype=np.int16),
    "int8": np.arange(-4, 4, dtype=np.int8),
    "uint8": np.arange(200, 206, dtype=np.uint8),
    "uint16": np.arange(4, dtype=np.uint16),
    "bool": np.array([True, False, True]),
    "empty": np.zeros((0, 3), dtype=np.float32),
    "scalar": np.array(2.5, dtype=np.float32),
}
metadata = {"format": "np", "note": "written by the reference package"}
original = workdir / "reference.safetensors"
save_file(tensors, str(original), metadata=metadata)

copied = workdir / "copied.safetensors"
subprocess.run([copy_tool, str(original), str(copied)], check=True)
back = load_file(str(copied))
assert back.keys() == tensors.keys(), (sorted(back), sorted(tensors))
for name, value in tensors.items():
    assert back[name].dtype == value.dtype, (name, back[name].dtype, value.dtype)
    assert back[name].shape == value.shape, (name, back[name].shape, value.shape)
    assert np.array_equal(back[name], value), name
with safe_open(str(copied), framework="numpy") as handle:
    assert handle.metadata() == metadata, handle.metadata()
header_length = struct.unpack("<Q", copied.read_bytes()[:8])[0]
assert header_length % 8 == 0, header_length

# A header the reference rejects: overlapping data. Ours must reject it with a named error.
header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                     "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode()
bad = workdir / "overlap.safetensors"
bad.write_bytes(struct.pack("<Q", len(header)) + header + bytes(12))
try:
    load_file(str(bad))
    raise AssertionError("the reference package accepted overlapping tensors")
except Exception as error:  # the package raises SafetensorError
    if isinstance(error, AssertionError):
        raise
result = subprocess.run([copy_tool, str(bad), str(workdir / "never.safetensors")],
                        capture_output=True, text=True)
assert result.returncode == 1 and "overlapping" in result.stderr and str(bad) in result.stderr, result
print("safetensors interop: OK,", len(tensors), "tensors both ways")
