"""Every refusal the readers promise, against the shipped programs.

    python hostile_inputs.py BIN_DIR MPIRUN WORK_DIR

Each case breaks a good input (a checkpoint fsdp-train saved, an HF model
written by transformers, an output directory holding a user's files) the way
a hostile file or an unlucky operator would, runs the program that reads it
(shard-inspect, fsdp-train --resume, --init-from-hf, --export-hf, ...) and
sorts the outcome:
    handled          non-zero exit, the message names the file and the key
    unclear          non-zero exit, but the message lacks what it must name
    crashed          killed by a signal (or a sanitizer report)
    hung             still running after the case's timeout
    accepted wrongly exit status 0
    data lost        a user's file is gone or changed afterwards
Prints one line per case and the table; fails unless every case is handled.
Needs only the Python standard library.
"""
import json
import os
import pathlib
import shutil
import signal
import struct
import subprocess
import sys
import time


bin_dir, mpirun, work = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
fixture_hf = pathlib.Path(__file__).parent / "fixtures" / "hf" / "llama3"
shutil.rmtree(work, ignore_errors=True)
work.mkdir(parents=True)

TRAIN = [str(bin_dir / "fsdp-train"), "--backend", "mpi", "--collective-timeout", "20"]
INSPECT = [str(bin_dir / "shard-inspect")]
# The model every checkpoint case saves and resumes.
MODEL = ["--model", "dense", "--hidden", "32", "--layers", "1", "--heads", "2",
         "--intermediate", "64", "--vocabulary", "64", "--seq-len", "8", "--batch", "2"]
SAN_MARKERS = ("AddressSanitizer", "UndefinedBehaviorSanitizer", "runtime error:",
               "Segmentation fault", "exited on signal", "core dumped")


def run(command, timeout=90):
    """(return code or None when it hung, merged output)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return None, output.decode(errors="replace")
    return process.returncode, output.decode(errors="replace")


# --- the good inputs -----------------------------------------------------------------
good_checkpoint = work / "good-checkpoint"
rc, output = run([mpirun, "-np", "2"] + TRAIN + MODEL +
                 ["--steps", "2", "--checkpoint-dir", str(good_checkpoint)])
if rc != 0:
    sys.exit("hostile_inputs: could not save the good checkpoint:\n" + output)
RANK0 = "rank-00000-of-00002.safetensors"
RANK1 = "rank-00001-of-00002.safetensors"


def checkpoint_copy(name):
    target = work / name
    shutil.copytree(good_checkpoint, target, symlinks=True)
    return target


def hf_copy(name):
    target = work / name
    shutil.copytree(fixture_hf, target)
    (target / "reference.safetensors").unlink()  # logits for another test, not a model file
    return target


def edit_index(directory, edit):
    path = directory / "index.json"
    index = json.loads(path.read_text())
    edit(index)
    path.write_text(json.dumps(index))


def framed(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def replace_with_fifo(path):
    path.unlink()
    os.mkfifo(path)


def resume(directory, ranks=2, extra=()):
    return [mpirun, "-np", str(ranks)] + TRAIN + MODEL + [
        "--steps", "3", "--resume", "--checkpoint-dir", str(directory)] + list(extra)


def init_from_hf(directory):
    return TRAIN + ["--init-from-hf", str(directory), "--steps", "1", "--batch", "1",
                    "--seq-len", "8", "--no-checkpoint"]


# --- the cases ------------------------------------------------------------------------
# (name, setup() -> command, fragments the message must hold, forbidden fragments,
#  files whose bytes must survive)
cases = []


def case(name, expect, forbid=(), keep=()):
    def register(setup):
        cases.append((name, setup, expect, forbid, keep))
        return setup
    return register


# Distributed checkpoints, read by shard-inspect and by fsdp-train --resume.
def deep_index(tool):
    directory = checkpoint_copy("deep-index-" + tool)
    (directory / "index.json").write_text("[" * 60000 + "]" * 60000)
    return (INSPECT + [str(directory)]) if tool == "inspect" else resume(directory)


for tool in ("inspect", "resume"):
    case(f"index.json nested 60,000 deep ({tool})", ["index.json", "nested deeper"])(
        lambda tool=tool: deep_index(tool))


@case("rank file header nested 40,000 deep", [RANK1, "checksum mismatch in block 0"])
def _():
    directory = checkpoint_copy("deep-rank-header")
    path = directory / RANK1
    size = path.stat().st_size
    header = b'{"x": ' + b"[" * 40000 + b"]" * 40000 + b"}"  # the file keeps its size
    assert size > 8 + len(header)
    path.write_bytes(framed(header, b"\0" * (size - 8 - len(header))))
    return resume(directory)


@case("rank file named ../elsewhere/...", ["index.json", "file 0", "../elsewhere"])
def _():
    directory = checkpoint_copy("traversal-rank-file")
    (work / "elsewhere").mkdir(exist_ok=True)
    shutil.copy(directory / RANK0, work / "elsewhere" / RANK0)
    edit_index(directory, lambda index: index["files"][0].update(name="../elsewhere/" + RANK0))
    return INSPECT + [str(directory)]


@case("rank file named /etc/passwd", ["index.json", "file 0", "/etc/passwd"], forbid=["root:x"])
def _():
    directory = checkpoint_copy("absolute-rank-file")
    edit_index(directory, lambda index: index["files"][0].update(name="/etc/passwd"))
    return resume(directory)


@case("rank file a link leading out of the checkpoint", ["index.json", "leads outside"])
def _():
    directory = checkpoint_copy("linked-rank-file")
    outside = work / "outside.safetensors"
    shutil.copy(directory / RANK0, outside)
    (directory / RANK0).unlink()
    (directory / RANK0).symlink_to(outside)
    return INSPECT + [str(directory)]


@case("rank files swapped in index.json", ["index.json", "file 0", RANK1])
def _():
    directory = checkpoint_copy("swapped-entries")
    edit_index(directory, lambda index: index["files"].reverse())
    return resume(directory)


@case("rank files swapped on disk", [RANK0, "metadata says", "rank 1"])
def _():
    directory = checkpoint_copy("swapped-files")
    (directory / RANK0).rename(directory / "tmp")
    (directory / RANK1).rename(directory / RANK0)
    (directory / "tmp").rename(directory / RANK1)
    # The checksums follow the files too, so only the files' metadata can tell.
    def swap_checksums(index):
        first, second = index["files"]
        first["checksum"], second["checksum"] = second["checksum"], first["checksum"]
        first["bytes"], second["bytes"] = second["bytes"], first["bytes"]
    edit_index(directory, swap_checksums)
    return INSPECT + [str(directory)]


for target, fragments in (("index.json", ["index.json", "not a regular file"]),
                          (RANK0, [RANK0, "not a regular file"])):
    for tool in ("inspect", "resume"):
        def fifo(target=target, tool=tool):
            directory = checkpoint_copy(f"fifo-{target}-{tool}")
            replace_with_fifo(directory / target)
            return (INSPECT + [str(directory)]) if tool == "inspect" else resume(directory)
        case(f"{target} is a FIFO ({tool})", fragments)(fifo)


@case("index.json is a directory", ["index.json", "not a regular file (a directory)"])
def _():
    directory = checkpoint_copy("index-directory")
    (directory / "index.json").unlink()
    (directory / "index.json").mkdir()
    return INSPECT + [str(directory)]


for key, value, where in (("step", 2**63 - 1, None), ("step", -1, None),
                          ("optimizer_steps", -5, None), ("world_size", 4294967299, None),
                          ("unpadded_numel", -1, "stage"), ("shard_numel", 2**62, "stage"),
                          ("bytes", -1, "file"), ("block_bytes", 0, "checksum")):
    def number(key=key, value=value, where=where):
        directory = checkpoint_copy(f"number-{key}-{value}")

        def edit(index):
            target = {None: index, "stage": index["stages"][0], "file": index["files"][0],
                      "checksum": index["files"][0]["checksum"]}[where]
            target[key] = value
        edit_index(directory, edit)
        return resume(directory)
    case(f"index {key} = {value}", ["index.json", f'"{key}"'])(number)


@case("index.json not JSON", ["index.json", "parse error"])
def _():
    directory = checkpoint_copy("index-not-json")
    (directory / "index.json").write_text('{"format": "fsdp-runtime-checkpoint",')
    return INSPECT + [str(directory)]


@case("index.json without stages", ["index.json", '"stages"'])
def _():
    directory = checkpoint_copy("index-no-stages")
    edit_index(directory, lambda index: index.pop("stages"))
    return resume(directory)


@case("rank file truncated", [RANK1])
def _():
    directory = checkpoint_copy("truncated")
    path = directory / RANK1
    os.truncate(path, path.stat().st_size - 100)
    return resume(directory)


@case("rank file corrupt in its data", [RANK0, "checksum mismatch"])
def _():
    directory = checkpoint_copy("corrupt-data")
    data = bytearray((directory / RANK0).read_bytes())
    data[-10] ^= 0x40
    (directory / RANK0).write_bytes(bytes(data))
    return resume(directory)


@case("rank files without index.json", ["index.json", "rank files"])
def _():
    directory = checkpoint_copy("no-index")
    (directory / "index.json").unlink()
    return INSPECT + [str(directory)]


# A series of checkpoints (--keep-checkpoints): its 'latest' pointer is input too.
def series_with_latest(name, latest):
    series = work / name
    series.mkdir()
    shutil.copytree(good_checkpoint, series / "step-00000002")
    if latest is None:
        os.mkfifo(series / "latest")
    else:
        (series / "latest").write_text(latest)
    return series


@case("series 'latest' naming ../good-checkpoint", ["latest", "expected a step directory name"])
def _():
    return resume(series_with_latest("series-traversal", "../good-checkpoint\n"),
                  extra=["--keep-checkpoints", "2"])


@case("series 'latest' naming a step never saved", ["latest names step-00000009", "not there"])
def _():
    return INSPECT + [str(series_with_latest("series-missing", "step-00000009\n"))]


@case("series 'latest' is a FIFO", ["latest", "not a regular file"])
def _():
    return resume(series_with_latest("series-fifo", None), extra=["--keep-checkpoints", "2"])


# HF checkpoints, read by shard-inspect and fsdp-train --init-from-hf.
def read_tensors(path):
    """{key: (dtype, shape, bytes)} of a safetensors file (any dtype, bfloat16 too)."""
    data = path.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + length])
    header.pop("__metadata__", None)
    base = 8 + length
    return {key: (entry["dtype"], entry["shape"],
                  data[base + entry["data_offsets"][0]:base + entry["data_offsets"][1]])
            for key, entry in header.items()}


def write_tensors(path, tensors):
    header, data = {}, b""
    for key, (dtype, shape, raw) in tensors.items():
        header[key] = {"dtype": dtype, "shape": shape,
                       "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    path.write_bytes(framed(text + b" " * (-len(text) % 8), data))


def hf_with_header(name, header, data=b""):
    directory = hf_copy(name)
    (directory / "model.safetensors").write_bytes(framed(header, data))
    return directory


@case("HF header nested 60,000 deep", ["model.safetensors", "deeper than 64"])
def _():
    return init_from_hf(hf_with_header("hf-deep", b'{"x": ' + b"[" * 60000 + b"]" * 60000 + b"}"))


@case("HF header: {} then NUL and garbage", ["model.safetensors"])
def _():
    return INSPECT + [str(hf_with_header("hf-nul", b"{}\0garbage"))]


@case("HF header length 2^63", ["model.safetensors", "header length field exceeds"])
def _():
    directory = hf_copy("hf-length")
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", 2**63) + b"{}")
    return init_from_hf(directory)


@case("HF tensors overlapping", ["model.safetensors", '"b"'])
def _():
    header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                         "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})
    return INSPECT + [str(hf_with_header("hf-overlap", header.encode(), b"\0" * 12))]


def hf_index(name, weight_map):
    directory = hf_copy(name)
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


@case("HF weight_map entry ../../x.safetensors",
      ["model.safetensors.index.json", "weight_map entry", "model.norm.weight", "../../x"])
def _():
    keys = read_tensors(fixture_hf / "model.safetensors").keys()
    weight_map = {key: "model.safetensors" for key in keys}
    weight_map["model.norm.weight"] = "../../x.safetensors"
    return init_from_hf(hf_index("hf-traversal", weight_map))


@case("HF weight_map entry /etc/passwd", ["weight_map entry", "/etc/passwd"], forbid=["root:x"])
def _():
    return INSPECT + [str(hf_index("hf-absolute", {"lm_head.weight": "/etc/passwd"}))]


@case("HF weight_map value not a string", ["model.safetensors.index.json", "lm_head.weight"])
def _():
    return INSPECT + [str(hf_index("hf-not-string", {"lm_head.weight": 7}))]


@case("HF model.safetensors is a FIFO", ["model.safetensors", "not a regular file"])
def _():
    directory = hf_copy("hf-fifo")
    replace_with_fifo(directory / "model.safetensors")
    return init_from_hf(directory)


@case("HF tensor of the wrong shape", ["model.norm.weight [7] in ", "hf-shape/model.safetensors"])
def _():
    directory = hf_copy("hf-shape")
    tensors = read_tensors(directory / "model.safetensors")
    dtype, _, raw = tensors["model.norm.weight"]
    tensors["model.norm.weight"] = (dtype, [7], raw[:7 * 2])  # bfloat16: 2 bytes each
    write_tensors(directory / "model.safetensors", tensors)
    return init_from_hf(directory)


@case("HF tensor missing", ["model.layers.1.mlp.down_proj.weight"])
def _():
    directory = hf_copy("hf-missing")
    tensors = read_tensors(directory / "model.safetensors")
    tensors.pop("model.layers.1.mlp.down_proj.weight")
    write_tensors(directory / "model.safetensors", tensors)
    return init_from_hf(directory)


@case("HF config.json nested 60,000 deep", ["config.json", "nested deeper"])
def _():
    directory = hf_copy("hf-config-deep")
    (directory / "config.json").write_text("[" * 60000 + "]" * 60000)
    return init_from_hf(directory)


@case("HF config.json a FIFO", ["config.json", "not a regular file"])
def _():
    directory = hf_copy("hf-config-fifo")
    replace_with_fifo(directory / "config.json")
    return init_from_hf(directory)


# Token files for --data (written as NumPy writes them, then broken).
def npy(header_dict: str, payload: bytes, magic=b"\x93NUMPY\x01\x00") -> bytes:
    header = header_dict.encode()
    header += b" " * (-(len(magic) + 2 + len(header) + 1) % 64) + b"\n"
    return magic + struct.pack("<H", len(header)) + header + payload


def train_on(path):
    return TRAIN + MODEL + ["--steps", "1", "--no-checkpoint", "--data", str(path)]


@case("--data of float tokens", ["floats.npy", "dtype '<f4'"])
def _():
    path = work / "floats.npy"
    path.write_bytes(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (64,), }",
                         b"\0" * 256))
    return train_on(path)


@case("--data shorter than its header says", ["short.npy", "its header says 100000"])
def _():
    path = work / "short.npy"
    path.write_bytes(npy("{'descr': '<u2', 'fortran_order': False, 'shape': (100000,), }",
                         b"\0" * 256))
    return train_on(path)


@case("--data header not NumPy's", ["garbage.npy", "not a token file NumPy wrote"])
def _():
    path = work / "garbage.npy"
    path.write_bytes(npy("{'descr': __import__('os'), }", b""))
    return train_on(path)


@case("--data a FIFO", ["tokens.bin", "not a regular file"])
def _():
    path = work / "tokens.bin"
    os.mkfifo(path)
    return train_on(path) + ["--data-dtype", "uint16"]


# Outputs that hold a user's files: refused before training, nothing deleted.
@case("--export-hf into a directory with the user's tokenizer",
      ["export-target holds files this runtime did not write (notes.txt, tokenizer.json)"], keep=["export-target/tokenizer.json", "export-target/notes.txt"])
def _():
    target = work / "export-target"
    target.mkdir()
    (target / "tokenizer.json").write_text('{"user": "data"}')
    (target / "notes.txt").write_text("mine")
    return TRAIN + MODEL + ["--steps", "1", "--no-checkpoint", "--export-hf", str(target)]


@case("--checkpoint-dir holding the user's files",
      ["user-run holds files this runtime did not write (eval.txt, tb/)"],
      keep=["user-run/eval.txt", "user-run/tb/events"])
def _():
    target = work / "user-run"
    (target / "tb").mkdir(parents=True)
    (target / "eval.txt").write_text("results")
    (target / "tb" / "events").write_text("events")
    return TRAIN + MODEL + ["--steps", "1", "--checkpoint-dir", str(target)]


# Options taken on no trust.
for words, fragment in ((["--collective-timeout", "1e10"], "--collective-timeout"),
                        (["--collective-timeout", "1e-9"], "--collective-timeout"),
                        (["--steps", "5", "oops"], "oops")):
    case("fsdp-train " + " ".join(words), [fragment])(
        lambda words=words: TRAIN[:1] + words)
case("shard-inspect DIR stray", ["unexpected argument 'stray'"])(lambda: INSPECT + [str(good_checkpoint), "stray"])


# --- running them ---------------------------------------------------------------------
def snapshot(paths):
    return {path: (work / path).read_bytes() if (work / path).is_file() else None
            for path in paths}


outcomes = {key: 0 for key in ("handled", "unclear", "crashed", "hung", "accepted wrongly",
                               "data lost")}
failures = []
for name, setup, expect, forbid, keep in cases:
    command = setup()
    before = snapshot(keep)
    started = time.monotonic()
    rc, output = run(command)
    seconds = time.monotonic() - started
    after = snapshot(keep)
    lost = [path for path in keep if before[path] is None or after[path] != before[path]]
    if rc is None:
        outcome = "hung"
    elif rc < 0 or rc >= 128 or any(marker in output for marker in SAN_MARKERS):
        outcome = "crashed"
    elif lost:
        outcome = "data lost"
    elif rc == 0:
        outcome = "accepted wrongly"
    elif all(part in output for part in expect) and not any(part in output for part in forbid):
        outcome = "handled"
    else:
        outcome = "unclear"
    outcomes[outcome] += 1
    # The line that names what the case is about, else the last one.
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    first_line = next((line for line in lines if expect[0] in line), lines[-1] if lines else "")
    print(f"{outcome:16s} rc={rc} {seconds:5.1f}s  {name}\n{'':17s}{first_line[:300]}")
    if outcome != "handled":
        failures.append((name, outcome, expect, forbid, lost, output[-3000:]))

print("\ncases tried  handled  unclear  crashed  hung  accepted wrongly  data lost")
print(f"{len(cases):11d}  {outcomes['handled']:7d}  {outcomes['unclear']:7d}  "
      f"{outcomes['crashed']:7d}  {outcomes['hung']:4d}  {outcomes['accepted wrongly']:16d}  "
      f"{outcomes['data lost']:9d}")
for name, outcome, expect, forbid, lost, output in failures:
    print(f"\n--- {outcome}: {name}\nmust name: {expect}; must not show: {list(forbid)}; "
          f"lost: {lost}\n{output}")
sys.exit(1 if failures else 0)
