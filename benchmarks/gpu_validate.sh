#!/usr/bin/env bash
# GPU validation on an H100/H200 in few device calls (the exact calls: docs/gpu_validation.md).
#
#   steps: wheels  install the carried wheels (.whl/, and DALI parts .dali1..N/ when staged)
#          tests   pytest tests/kernels, compiled on the GPU
#          kbench  python -m imd_kernels.bench (IMD-B and IMD-L shapes, vs eager and torch.compile)
#          train   benchmarks/train_step_bench.py: IMD-B steps/s, peak memory, MFU; Triton vs eager
#          loader  benchmarks/loader_bench.py: DALI-GPU (NVDEC), PyAV x8 and x16 and torchcodec clips/s
#                  and CPU cores busy, RGB + flow, on the source clips and on the training store
#                  (the real clip plus synthetic H.264 ones encoded here); skipped without nvidia.dali
#          nvof    benchmarks/flow_bench.py nvof: DALI fn.optical_flow (the optical-flow engine) on the
#                  real clips, GPU ms per pair and mean EPE against DIS medium
#          e2e     benchmarks/train_step_bench.py --loader: IMD-B at micro batch 64 fed by the loader
#                  (DALI-GPU on the training store, the loader step's data) against random batches,
#                  the ratio of samples/s (target >= 0.9), the step's wait and CPU cores busy
#          trainstep  the train step at the presets' micro batches, eager / torch.compile / our
#                  kernels / kernels + compile, IMD-B and IMD-L, and the attention kernels against
#                  SDPA on contiguous q, k, v (imd_kernels.bench_sdpa): every ratio from one run
#   Each step runs under its own `timeout`, all of them inside one budget; one summary table
#   is printed last. The full log, the summary and every JSON result land in $OUT; summary.md is
#   rewritten after every step (and trainstep.md after every part of its step), so a call cut short
#   still returns the figures of the steps it finished.
#
#   bash benchmarks/gpu_validate.sh                      # on the GPU machine: call 4 of the plan
#   GPU_VALIDATE_DRY=1 bash benchmarks/gpu_validate.sh   # CPU rehearsal of every step that runs here
#   bash benchmarks/gpu_validate.sh --fetch-wheels       # here: fill .whl/ with what the GPU image lacks
#   bash benchmarks/gpu_validate.sh --fetch-dali         # here: DALI + its needs, split into .dali1..N/
#
# Environment: OUT (results; default /tmp/gpu_validate), GPU_VALIDATE_STEPS (a subset of "wheels
# tests kbench train flowcpu loader nvof e2e trainstep kbench_compile"; default on the GPU "wheels
# loader nvof", call 4 of docs/gpu_validation.md, whose files fit the 8 a device call returns; dry,
# all of them: a local rehearsal, up to 15 files in $OUT), GPU_VALIDATE_BUDGET (seconds for all
# steps; default 330 on the GPU, call 4's, and 1500 dry), PYTHON (interpreter; default python3, or
# .venv/bin/python in dry mode).
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1

DRY=${GPU_VALIDATE_DRY:-0}
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    [ "$DRY" = 1 ] && [ -x .venv/bin/python ] && PYTHON=.venv/bin/python
fi
PY=$PYTHON
export PYTHONUNBUFFERED=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

# Only packages the GPU image lacks (docs/gpu_validation.md lists the image's packages and these
# sizes), at the versions requirements.lock pins for the image's Python 3.12: one list of versions.
lock_pins() {  # NAME... -> NAME==VERSION..., each as the lock pins it for CPython 3.12 on Linux x86-64
    "$PY" - "$REPO/requirements.lock" "$@" <<'PINS'
import re, sys
try:
    from packaging.markers import Marker
except ImportError:  # a bare interpreter: pip carries the same library
    from pip._vendor.packaging.markers import Marker
env = {"python_full_version": "3.12.0", "python_version": "3.12", "sys_platform": "linux",
       "platform_machine": "x86_64", "platform_system": "Linux", "implementation_name": "cpython"}
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
pins = {}
for line in open(sys.argv[1]):
    m = re.match(r"([A-Za-z0-9][\w.-]*)==([^\s;]+)\s*(?:;\s*(.+))?$", line.strip())
    if m and (m[3] is None or Marker(m[3]).evaluate(env)):
        pins[norm(m[1])] = f"{m[1]}=={m[2]}"
missing = [n for n in sys.argv[2:] if norm(n) not in pins]
if missing:
    sys.exit(f"requirements.lock pins no version of {', '.join(missing)} for Python 3.12")
print(" ".join(pins[norm(n)] for n in sys.argv[2:]))
PINS
}
WHEELS_BINARY_NAMES="hjson pydantic pydantic_core annotated-types typing-inspection av yacs termcolor"
WHEELS_SDIST_NAMES="deepspeed fvcore iopath"  # no binary wheels on PyPI
DALI_WHEEL_NAMES="nvidia-dali-cuda130 nvidia-nvimgcodec-cu13 nvidia-libnvcomp-cu13 nvtx libcst makefun astunparse gast optree"
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
DALI_PART_MB=62     # a part plus the working tree must stay under the 64 MiB a call carries
DALI_FIRST_MB=21    # the first part travels with the first call, beside .whl/ (about 40 MiB)
REAL_CLIP=decord_flipping_a_pancake.mkv

exclude() {  # keep a folder out of git (and so out of the tree a call sends unless carried)
    mkdir -p .git/info
    grep -qxF "$1" .git/info/exclude 2>/dev/null || echo "$1" >>.git/info/exclude
}

fetch_wheels() {
    exclude /.whl/
    exclude /.gpuval/
    mkdir -p .whl .gpuval
    # shellcheck disable=SC2086
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        $PLATFORMS -d .whl $(lock_pins $WHEELS_BINARY_NAMES) || return 1
    # shellcheck disable=SC2086
    "$PY" -m pip wheel -q --no-deps -w .whl $(lock_pins $WHEELS_SDIST_NAMES) || return 1  # pure Python: py3-none-any
    # The shared real clips (1.4 MB): the loader step's real clip, and the nvof step's EPE clips.
    local clips="$REPO/../shared/data/videos"
    if [ -f "$clips/$REAL_CLIP" ]; then
        cp -f "$clips"/* .gpuval/
    else
        echo "note: $clips/$REAL_CLIP not found; the loader step uses synthetic clips only, nvof has none"
    fi
    ls -l .whl .gpuval
    du -cb .whl/*.whl | tail -1
}

fetch_dali() {
    # The DALI wheel alone (190 MiB) is three times what one call carries. Shipped instead: the
    # unpacked wheels less DALI's Python bindings for the interpreters the GPU image does not run
    # (3.10, 3.11, 3.13-3.15, free-threaded), as one xz-compressed tar split into carried parts.
    exclude '/.dali*/'
    local tmp w
    tmp=$(mktemp -d)
    # shellcheck disable=SC2086
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        $PLATFORMS -d "$tmp/w" $(lock_pins $DALI_WHEEL_NAMES) || { rm -rf "$tmp"; return 1; }
    mkdir -p "$tmp/site"
    for w in "$tmp"/w/*.whl; do "$PY" -m zipfile -e "$w" "$tmp/site" || { rm -rf "$tmp"; return 1; }; done
    find "$tmp/site/nvidia/dali" -maxdepth 1 -name '*.cpython-*.so' ! -name '*.cpython-312-*' -print -delete
    rm -rf "$tmp"/site/*.data "$tmp/site/nvidia/__init__.py"  # wheel scripts; keep `nvidia` as the image has it
    du -sb "$tmp/site"
    echo "compressing (xz -9e; several minutes)"
    (cd "$tmp/site" && tar -cf - .) | xz -9e -T0 >"$tmp/dali.tar.xz" || { rm -rf "$tmp"; return 1; }
    rm -rf .dali[0-9]*
    # Part 1 rides along with the first call (beside .whl/), the others alone.
    head -c "$((DALI_FIRST_MB * 1048576))" "$tmp/dali.tar.xz" >"$tmp/first"
    tail -c "+$((DALI_FIRST_MB * 1048576 + 1))" "$tmp/dali.tar.xz" | split -b "${DALI_PART_MB}M" -d -a 2 - "$tmp/rest"
    mkdir -p .dali1 && mv "$tmp/first" .dali1/dali.tar.xz.part00
    local i=1 part
    for part in "$tmp"/rest*; do
        [ -s "$part" ] || continue
        i=$((i + 1))
        mkdir -p ".dali$i"
        mv "$part" ".dali$i/dali.tar.xz.part$(printf %02d $((i - 1)))"
    done
    (cd "$tmp" && sha256sum dali.tar.xz | cut -d' ' -f1) >.dali1/dali.tar.xz.sha256
    rm -rf "$tmp"
    du -b .dali[0-9]*/*
    echo "$i parts: .dali1 travels with the first call (carry [\".whl\", \".gpuval\", \".dali1\"]), each"
    echo "other with its own call on the same warm machine; see docs/gpu_validation.md"
}

case "${1:-}" in
    --fetch-wheels) fetch_wheels; exit $? ;;
    --fetch-dali) fetch_dali; exit $? ;;
    "") ;;
    *) echo "usage: bash benchmarks/gpu_validate.sh [--fetch-wheels | --fetch-dali]" >&2; exit 2 ;;
esac

OUT=${OUT:-/tmp/gpu_validate}
mkdir -p "$OUT"
WORK=$(mktemp -d)
LOG="$OUT/gpu_validate.log"
if [ "$DRY" = 1 ]; then  # a local rehearsal of every step
    STEPS=${GPU_VALIDATE_STEPS:-wheels tests kbench train flowcpu loader nvof e2e trainstep kbench_compile}
    BUDGET=${GPU_VALIDATE_BUDGET:-1500}
else  # call 4 of the plan (docs/gpu_validation.md): the loader's figures first
    STEPS=${GPU_VALIDATE_STEPS:-wheels loader nvof}
    BUDGET=${GPU_VALIDATE_BUDGET:-330}
fi
T0=$(date +%s)
: >"$WORK/steps.tsv"

want() { [[ " $STEPS " == *" $1 "* ]]; }

# run_step NAME LIMIT_S CMD...: the command under `timeout`, never past the overall budget.
run_step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - ($(date +%s) - T0) - 10))
    if [ "$left" -lt 20 ]; then
        echo "== $name: SKIPPED, budget of ${BUDGET} s spent"
        printf '%s\tskipped (budget spent)\t0\n' "$name" >>"$WORK/steps.tsv"
        summary >/dev/null 2>&1
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo
    echo "== $name (limit ${limit} s) $(date -u +%H:%M:%S): $*"
    local s rc status
    s=$(date +%s)
    # bash -c runs programs and this script's exported functions alike under one timeout.
    timeout -k 10 "$limit" bash -c '"$@"' "$name" "$@"
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status="TIMEOUT after ${limit} s" ;;
        *) status="FAILED (exit $rc)" ;;
    esac
    echo "== $name: $status in $(($(date +%s) - s)) s"
    printf '%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - s))" >>"$WORK/steps.tsv"
    summary >/dev/null 2>&1  # summary.md as it stands: what a call cut short later still returns
}

skip_step() {
    echo
    echo "== $1: SKIPPED: $2"
    printf '%s\tskipped: %s\t0\n' "$1" "$2" >>"$WORK/steps.tsv"
    summary >/dev/null 2>&1
}

preflight() {
    echo "gpu_validate $(date -u '+%Y-%m-%d %H:%M:%S UTC') dry=$DRY budget=${BUDGET}s steps: $STEPS"
    echo "host $(hostname), $(getconf _NPROCESSORS_ONLN) CPUs, $(free -g 2>/dev/null | awk '/Mem:/{print $2 " GiB RAM"}')"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ //')"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu \
            --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
    else
        echo "gpu: nvidia-smi not found"
    fi
    # NVDEC needs the driver's libnvcuvid; DALI's GPU video decoder cannot run without it.
    echo "libnvcuvid: $( (ldconfig -p 2>/dev/null | grep -o 'libnvcuvid.so[.0-9]*' | sort -u | tr '\n' ' ') || true)"
    "$PY" - <<'PY'
import importlib, sys
import torch
print(f"python {sys.version.split()[0]} ({sys.executable}), torch {torch.__version__}, "
      f"cuda available {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, "
          f"capability {p.major}.{p.minor}")
for mod in ("triton", "deepspeed", "nvidia.dali", "av", "fvcore", "timm", "transformers"):
    try:
        m = importlib.import_module(mod)
        print(f"  {mod:<12} {getattr(m, '__version__', '?')}")
    except Exception as e:  # a missing package is what this line reports
        print(f"  {mod:<12} not importable ({type(e).__name__}: {str(e).splitlines()[0][:80]})")
PY
}

# ---- step: wheels ---------------------------------------------------------------------------
check_wheels() {  # dry run: tags fit the GPU image's Python 3.12 / x86-64, and the carry fits 64 MiB
    "$PY" - <<'PY'
import glob, os, subprocess
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import parse_wheel_filename
plats = [f"manylinux_2_{n}_x86_64" for n in range(39, 4, -1)] + ["manylinux2014_x86_64", "manylinux1_x86_64",
                                                                  "linux_x86_64"]
ok = set(cpython_tags((3, 12), abis=["cp312", "abi3", "none"], platforms=plats))
ok |= set(compatible_tags((3, 12), "cp312", plats))
wheels = sorted(glob.glob(".whl/*.whl"))
bad = [w for w in wheels if not (set(parse_wheel_filename(os.path.basename(w))[3]) & ok)]
size = sum(os.path.getsize(w) for w in wheels)
files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True,
                       check=True).stdout.decode().split("\0")
tree = sum(os.path.getsize(f) for f in files if f and os.path.isfile(f))
extra = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(".gpuval") for f in fs)
for w in wheels:
    print(f"  {os.path.getsize(w):>11,d}  {os.path.basename(w)}")
total = size + tree + extra
print(f"wheels {size:,d} B + working tree {tree:,d} B + .gpuval {extra:,d} B = {total:,d} B "
      f"({total / 2**20:.1f} MiB of the 64 MiB a call carries)")
if bad:
    raise SystemExit(f"wheels that do not install on CPython 3.12 x86-64: {bad}")
if total > 64 * 2**20:
    raise SystemExit("the call would carry more than 64 MiB")
PY
}

install_wheels() {
    local site=/tmp/site
    if ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
            .whl/*.whl || return 1
        export PYTHONPATH="$REPO:$site"
        echo "installed $(ls .whl/*.whl | wc -l) wheels into $site"
    else
        echo "no .whl/ folder: nothing to install (deepspeed, av and fvcore must already be importable)"
    fi
    if ls .dali[0-9]*/dali.tar.xz.part* >/dev/null 2>&1; then
        # Parts staged by this and earlier calls on this warm machine (docs/gpu_validation.md).
        local parts purelib
        parts=$(ls .dali[0-9]*/dali.tar.xz.part* | awk -F'part' '{print $NF" "$0}' | sort -n | cut -d' ' -f2)
        # shellcheck disable=SC2086
        if [ "$(cat $parts | sha256sum | cut -d' ' -f1)" != "$(cat .dali1/dali.tar.xz.sha256 2>/dev/null)" ]; then
            echo "DALI parts incomplete or corrupt (sha256 mismatch; staged: $(echo $parts | wc -w) parts)"
        else
            # Into the interpreter's own site-packages: the `nvidia` package there may be a regular
            # package, which would hide an nvidia/dali installed under another path.
            purelib=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
            # shellcheck disable=SC2086
            cat $parts | xz -dc | tar -x -C "$purelib" \
                && echo "installed DALI from $(echo $parts | wc -w) staged parts into $purelib"
        fi
    fi
    "$PY" -c "import deepspeed, av, fvcore; print('deepspeed', deepspeed.__version__, '| av', av.__version__, '| fvcore ok')"
}

# ---- step: loader ------------------------------------------------------------------------------
make_h264_dataset() {  # ROOT N_TRAIN N_VAL WIDTH HEIGHT FRAMES REPEAT: real clip + synthetic H.264 clips, prepared
    "$PY" - "$@" <<'PY'
import os, sys
from pathlib import Path

sys.path.insert(0, "benchmarks")
from h264_clips import make_clips  # the moving-texture H.264 clips, one maker for every benchmark

root, n_train, n_val, width, height, frames, repeat = sys.argv[1], *map(int, sys.argv[2:])
root = Path(root)
clips = make_clips(root / "videos", n_train + n_val, width, height, frames, workers=min(8, os.cpu_count() or 1))
rels = [f"videos/{p.name}" for p in clips]
real = [p for p in (Path(".gpuval") / "decord_flipping_a_pancake.mkv",
                    Path("..") / "shared" / "data" / "videos" / "decord_flipping_a_pancake.mkv") if p.is_file()]
train = rels[:n_train]
if real:
    dst = root / "videos" / real[0].name
    if not dst.exists():
        dst.write_bytes(real[0].read_bytes())
    train.append(f"videos/{real[0].name}")
# Each training video under `repeat` names (symbolic links): more clips an epoch, prepared as
# separate clips, at the encoding cost of one.
listed = []
for r in range(repeat):
    for rel in train:
        if r:
            name = root / "videos" / f"r{r}_{Path(rel).name}"
            if not name.exists():
                name.symlink_to(Path(rel).name)
            rel = f"videos/{name.name}"
        listed.append(rel)
classes = ["class_a", "class_b"]
(root / "classes.txt").write_text("\n".join(classes) + "\n")
(root / "train.txt").write_text("".join(f"{r} {classes[k % 2]}\n" for k, r in enumerate(listed)))
(root / "val.txt").write_text("".join(f"{r} {classes[k % 2]}\n" for k, r in enumerate(rels[n_train:])))

# A small randomly initialised AST tagger: prepare needs one; its outputs do not change decoding.
tagger = root / "tagger"
if not (tagger / "config.json").exists():
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification
    cfg = ASTConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                    num_labels=8, id2label={i: f"sound {i}" for i in range(8)},
                    label2id={f"sound {i}": i for i in range(8)})
    ASTForAudioClassification(cfg).save_pretrained(tagger)
    ASTFeatureExtractor().save_pretrained(tagger)
print(f"{len(listed)} train clips ({'real clip + ' if real else 'no real clip, '}{n_train} synthetic H.264 "
      f"{width}x{height}x{frames}, each listed {repeat} times), {len(rels) - n_train} val clips in {root}")
PY
    local root=$1
    "$PY" -m imd_hpc prepare --dataset list --root "$root" --train-list "$root/train.txt" \
        --val-list "$root/val.txt" --classes "$root/classes.txt" --tagger "$root/tagger" --quiet \
        --workers "$(getconf _NPROCESSORS_ONLN)"
}

loader_data() {  # ROOT: the loader step's dataset (below), built or completed there (encoding and prepare resume)
    if [ "$DRY" = 1 ]; then
        make_h264_dataset "$1" 6 2 160 120 48 1
    else
        make_h264_dataset "$1" 31 2 426 240 300 3
    fi
}

prepared_done() {  # ROOT: prepare finished there (every clip of its manifests has a status line)
    "$PY" - "$1" <<'PY' >/dev/null 2>&1
import sys
from imd_hpc.data.manifest import read_manifest, read_status

root = sys.argv[1]
status = read_status(root)
sys.exit(0 if all(r.clip_id in status for split in ("train", "val") for r in read_manifest(root, split)) else 1)
PY
}

loader_step() {
    local root=$WORK/h264 out=$OUT/loader_bench_flow.txt
    if [ "$DRY" = 1 ]; then
        # CPU: DALI decodes no H.264 here and there is no GPU, so only the PyAV rows can be rehearsed.
        loader_data "$root" || return 1
        # shellcheck disable=SC2086
        "$PY" benchmarks/loader_bench.py --root "$root" --backends pyav,torchcodec --workers 2 --epochs 1 \
            --rgb-from source,store --set model.modalities=A-RGB-F train.micro_batch=4 data.num_frames=8 \
            data.sampling_rate=4 data.crop_size=112 | tee "$out"
        return "${PIPESTATUS[0]}"
    fi
    # First the GPU path's own test: NVDEC views are CUDA tensors and match PyAV's. Its result is
    # logged; the benchmark runs either way (its "tensors on" column shows the device too).
    "$PY" -m pytest -q -p no:cacheprovider tests/test_data_loader.py -k dali_gpu 2>&1 | tail -15
    echo "dali-gpu test: exit ${PIPESTATUS[0]}"
    # 32 videos (31 synthetic 426x240 H.264 of 300 frames + the real clip), each listed 3 times
    # (96 train clips: 6 batches of 16 an epoch, so an epoch's start matters less), prepared with
    # flow and the training store. IMD-B views: 8 frames x 32, 224 crop, RGB + flow; 8 DALI threads.
    loader_data "$root" || return 1
    "$PY" benchmarks/loader_bench.py --root "$root" --backends dali-gpu,pyav,torchcodec --pyav-workers 8,16 \
        --workers 8 --epochs 1 --seconds 6 --rgb-from source,store --set model.modalities=A-RGB-F \
        train.micro_batch=16 data.num_frames=8 data.sampling_rate=32 data.crop_size=224 | tee "$out"
    return "${PIPESTATUS[0]}"
}

nvof_step() {  # the optical-flow engine against DIS medium on the real clips, at the flow store's size
    "$PY" benchmarks/flow_bench.py nvof --clips .gpuval --pairs 150 --repeats 3 | tee "$OUT/flow_nvof.txt"
    return "${PIPESTATUS[0]}"
}

# ---- step: e2e ------------------------------------------------------------------------------------
# IMD-B trained from the training store through the real loader (DALI-GPU, NVDEC) against the same
# step on random batches, one run of benchmarks/train_step_bench.py --loader (docs/gpu_validation.md,
# "The e2e step"). Its data is the loader step's, left in $WORK/h264 for the steps after it in the
# same call (built here when that step did not run), each training clip listed E2E_COPIES times
# under new ids whose prepared files are links to the clip's own: an epoch of many batches, as on
# Kinetics (3,750 of 64), rather than the 1 of 64 that 96 clips make, at no cost of prepare.
replicate_train() {  # SRC DST COPIES: SRC's train split COPIES times (prepared files linked), val as is
    "$PY" - "$@" <<'PY'
import shutil, sys
from pathlib import Path
from imd_hpc.data.flow import FLOW_EXT, FORMAT_FILE
from imd_hpc.data.manifest import ClipRow, DatasetMeta, read_manifest, write_manifest
from imd_hpc.data.rgb_store import RGB_FORMAT_FILE, RgbFormat, store_path

src, dst, copies = Path(sys.argv[1]).resolve(), Path(sys.argv[2]), int(sys.argv[3])
shutil.rmtree(dst, ignore_errors=True)
sp, dp = src / "prepared", dst / "prepared"
for d in ("audio", "flow", "rgb"):
    (dp / d).mkdir(parents=True)
for name in ("meta.json", "prepared/" + FORMAT_FILE, "prepared/" + RGB_FORMAT_FILE):
    if (src / name).is_file():
        shutil.copy(src / name, dst / name)
(dst / "videos").symlink_to(src / "videos")
store = RgbFormat.read(sp)
meta = DatasetMeta.read(src)

def link(old: str, new: str) -> None:
    pairs = [(f"audio/{old}.npz", f"audio/{new}.npz"), (f"flow/{old}{FLOW_EXT}", f"flow/{new}{FLOW_EXT}")]
    if store is not None:
        pairs.append((store_path(".", old, store), store_path(".", new, store)))
    for a, b in pairs:
        if (sp / a).is_file():
            (dp / b).symlink_to(sp / a)

for split, n in (("train", copies), ("val", 1)):
    rows = []
    for r in read_manifest(src, split, num_classes=len(meta.video_classes)):
        for k in range(n):
            cid = r.clip_id if k == 0 else f"{r.clip_id}_x{k}"
            link(r.clip_id, cid)
            rows.append(ClipRow(cid, r.video, r.audio, r.label, r.label_name, r.gt_relevance))
    write_manifest(dst / f"{split}.csv", rows)
    print(f"{dst}: {split} {len(rows)} clips ({n} per clip of {src})")
PY
}

e2e_step() {
    local src=$WORK/h264 root=$WORK/e2e t
    t=$(date +%s)
    loader_data "$src" || return 1  # already there when the loader step ran in this call: a few seconds
    echo "e2e: the loader step's dataset ready in $(($(date +%s) - t)) s"
    local bench=(benchmarks/train_step_bench.py --no-deepspeed --one-process --out "$OUT/e2e.json"
                 --markdown "$OUT/e2e.md" --loader "$root")
    if [ "$DRY" = 1 ]; then
        # CPU rehearsal: tiny, micro batch 2, PyAV in 2 workers (DALI's CPU decoder reads no H.264):
        # 7 clips x 2 = 7 batches an epoch; the loader row's 2 + 12 batches cross into a second one.
        replicate_train "$src" "$root" 2 || return 1
        timeout -k 10 240 "$PY" "${bench[@]}" --preset tiny --kernels torch --steps 6 --loader-steps 12 \
            --warmup 2 --seconds 60 --loader-backend pyav --backend-timeout 110 --set data.num_workers=2
    else
        # IMD-B at its micro batch 64, our kernels eager (train.compile's GPU default, off), plain SGD
        # loop; 96 clips x 40 = 60 batches an epoch; DALI-GPU with 8 threads, data.prefetch 2, RGB from
        # the store and flow (A-RGB-F). 4 warm-up steps a row; the random row's rate is steady, 30 timed
        # steps (about 11 s); the loader row up to 300 (5 epochs), ended by --seconds after 75 s of
        # them (about 200 steps at the expected 0.37 s a step), so a slow loader still gives its ratio
        # from the steps it fed. Both rows in one process of at most 2 x 85 s, inside the bench's 200 s
        # (the bench writes e2e.json once that process has ended: it must not be cut first).
        replicate_train "$src" "$root" 40 || return 1
        timeout -k 10 200 "$PY" "${bench[@]}" --preset imd_b --kernels triton --steps 30 --loader-steps 300 \
            --warmup 4 --seconds 75 --loader-backend dali --backend-timeout 85 --set data.num_workers=8
    fi
}

# ---- step: trainstep ----------------------------------------------------------------------------
# The GPU train step against torch.compile, and our attention against SDPA, in one run so that every
# ratio compares figures of one machine (docs/gpu_validation.md, "The trainstep step"). In order of
# importance, each part under its own timeout inside the step's: IMD-B's four rows (compiled per
# block, train.compile=blocks: a fraction of a whole-model compile's time), attention vs SDPA,
# IMD-L's four rows, then, when 120 s are left, torch.compile of the whole IMD-B model (the
# comparison as first measured, 2026-12-04). Results: train_step_*.json, attention_sdpa.json and one
# markdown file, trainstep.md.
trainstep_step() {  # SECONDS: this step's own budget (cut to what the script's budget leaves)
    local own=$1 rc=0 b l tiny_rows
    local cap=$((BUDGET - ($(date +%s) - T0) - 20))
    [ "$own" -gt "$cap" ] && own=$cap
    local end=$(($(date +%s) + own))
    local bench=(benchmarks/train_step_bench.py --no-deepspeed --one-process)
    remaining() { echo $((end - $(date +%s) - 5)); }
    tables() {  # trainstep.md from the parts done so far, and summary.md with it
        "$PY" benchmarks/train_step_bench.py --combine "$OUT"/train_step_imd_b*.json "$OUT"/train_step_imd_l.json \
            --markdown "$WORK/trainstep_train.md" >/dev/null
        {
            cat "$WORK/trainstep_train.md" 2>/dev/null
            if [ -f "$OUT/attention_sdpa.json" ]; then
                echo
                "$PY" -c 'import json, sys; from imd_kernels.bench_sdpa import format_tables; d = json.load(open(sys.argv[1])); print(d["device"] + ", " + d["date"] + "\n\n" + format_tables(d["rows"], d["tilings"]))' "$OUT/attention_sdpa.json"
            fi
        } >"$OUT/trainstep.md.tmp" && mv "$OUT/trainstep.md.tmp" "$OUT/trainstep.md"
        summary >/dev/null 2>&1
    }
    part() {  # LIMIT_S CMD...: one part under min(LIMIT_S, time left), the tables rewritten after it
        local limit=$1 rc
        shift
        [ "$(remaining)" -lt "$limit" ] && limit=$(remaining)
        if [ "$limit" -lt 30 ]; then echo "trainstep: skipped (budget spent): $*"; return 1; fi
        echo "-- trainstep part (limit ${limit} s): $*"
        timeout -k 10 "$limit" "$@"
        rc=$?
        tables
        return $rc
    }
    if [ "$DRY" = 1 ]; then
        # CPU rehearsal on the tiny preset: the Triton rows through the interpreter, Inductor's CPU code.
        tiny_rows=torch,triton,torch+compile,triton+compile
        part 900 "$PY" "${bench[@]}" --preset tiny --kernels $tiny_rows --compile-mode blocks --steps 1 --warmup 1 \
            --backend-timeout 200 --out "$OUT/train_step_imd_b.json" || rc=1
        part 60 "$PY" -m imd_kernels.bench_sdpa --json "$OUT/attention_sdpa.json" || rc=1
        part 300 "$PY" "${bench[@]}" --preset tiny --kernels torch+compile:model --steps 1 --warmup 1 \
            --backend-timeout 250 --out "$OUT/train_step_imd_b_model.json" || rc=1
    else
        b=(--steps 15 --warmup 6)  # the protocol of the 2026-12-04 measurements
        l=(--steps 10 --warmup 4)
        part 200 "$PY" "${bench[@]}" --preset imd_b --kernels torch+compile,triton+compile,triton,torch \
            --compile-mode blocks "${b[@]}" --backend-timeout 45 --out "$OUT/train_step_imd_b.json" || rc=1
        part 90 "$PY" -m imd_kernels.bench_sdpa --json "$OUT/attention_sdpa.json" || rc=1
        part 200 "$PY" "${bench[@]}" --preset imd_l --kernels torch+compile,triton+compile,triton,torch \
            --compile-mode blocks "${l[@]}" --backend-timeout 45 --out "$OUT/train_step_imd_l.json" || rc=1
        if [ "$(remaining)" -ge 120 ]; then
            part 150 "$PY" "${bench[@]}" --preset imd_b --kernels torch+compile:model "${b[@]}" \
                --backend-timeout 130 --out "$OUT/train_step_imd_b_model.json" || rc=1
        else
            echo "trainstep: torch.compile of the whole IMD-B model skipped: $(remaining) s left"
        fi
    fi
    tables
    cat "$OUT/trainstep.md"
    return $rc
}

# ---- the summary ---------------------------------------------------------------------------------
summary() {
    STEPS_TSV="$WORK/steps.tsv" PYTEST_TXT="$WORK/pytest.txt" OUTDIR="$OUT" DRY="$DRY" "$PY" - <<'PY'
import json, os, re
from pathlib import Path

from imd_hpc.atomic import atomic_write_text

out = Path(os.environ["OUTDIR"])
dry = os.environ["DRY"] == "1"
rows = []  # (check, measured, target, verdict)

def verdict(value, target):
    if value is None:
        return "not measured"
    if dry:
        return "CPU, not meaningful"
    return "met" if value >= target else f"MISSED by {100 * (1 - value / target):.0f}%"

steps = [line.split("\t") for line in Path(os.environ["STEPS_TSV"]).read_text().splitlines() if line]
status = {s[0]: s[1] for s in steps}

pytest = Path(os.environ["PYTEST_TXT"])
if pytest.is_file():
    last = [l for l in pytest.read_text().splitlines() if re.search(r"\d+ (passed|failed|error)", l)]
    rows.append(("pytest tests/kernels", last[-1].strip("= ") if last else status.get("tests", "?"),
                 "all pass", "met" if last and " failed" not in last[-1] and "error" not in last[-1]
                 and status.get("tests") == "ok" else status.get("tests", "?")))

kb = out / "kernels_bench.json"
compiled = {}
if (out / "kernels_bench_compile.json").is_file():
    for x in json.loads((out / "kernels_bench_compile.json").read_text())["rows"]:
        if x.get("compile_ms"):
            compiled[(x["shape"], x["op"], x["mode"])] = x["compile_ms"] / x["triton_ms"]
if kb.is_file():
    data = json.loads(kb.read_text())
    rows.append(("device-to-device copy", f"{data['copy_gbps']:.0f} GB/s (read + write)", "", "-"))
    for shape in ("imd_b", "imd_l"):
        for op, target, label in (("temporal", 2.0, shape), ("spatial", 1.2, shape),
                                  ("imd_mask", 3.0, f"{shape} B=64")):
            r = [x for x in data["rows"] if x["op"] == op and x["shape"] == label and x["mode"] == "fwd+bwd"]
            if not r:
                continue
            ratio = r[0]["eager_ms"] / r[0]["triton_ms"]
            vs_comp = compiled.get((label, op, "fwd+bwd"))
            comp = f", vs torch.compile {vs_comp:.2f}x (kbench_compile run)" if vs_comp else ""
            tgt = f">= {target}x" if shape == "imd_b" else "(IMD-B target only)"
            rows.append((f"{op} fwd+bwd {label}", f"{ratio:.2f}x vs eager ({r[0]['triton_ms']:.3f} ms){comp}", tgt,
                         verdict(ratio, target) if shape == "imd_b" else "-"))
elif "kbench" in status:
    rows.append(("imd_kernels.bench", status["kbench"] if not dry else "no CUDA: prints that and exits 0", "", "-"))

lb = out / "loader_bench_flow.txt"
rates = {}  # (rgb from, backend) -> (clips/s, CPU cores busy, tensors on)
if lb.is_file():
    for line in lb.read_text().splitlines():
        m = re.match(r"\|\s*(source|store)\s*\|\s*([\w -]+?)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*([\d.]+)\s*\|"
                     r"\s*([\d.]+)\s*\|[^|]*\|\s*([\w:,]*)", line)
        if m:
            rates[(m.group(1), m.group(2))] = (float(m.group(5)), float(m.group(6)), m.group(7))
if rates:
    for (src, backend), (rate, cores, dev) in rates.items():
        rows.append((f"loader, RGB + flow, {backend} on the {src}", f"{rate:.1f} clips/s, {cores:.2f} CPU cores busy, "
                     f"tensors on {dev}", "", "-"))
gpu_store, pyav_source = rates.get(("store", "dali-gpu")), rates.get(("source", "pyav x8"))
if gpu_store:
    rows.append(("DALI-GPU on the training store, IMD-B views (RGB + flow)", f"{gpu_store[0]:.1f} clips/s",
                 ">= 300 clips/s", verdict(gpu_store[0], 300.0)))
    cores_ok = "CPU, not meaningful" if dry else ("met" if gpu_store[1] <= 2.0 else
                                                   f"MISSED: {gpu_store[1]:.2f} cores")
    rows.append(("CPU cores busy feeding it", f"{gpu_store[1]:.2f}", "<= 2", cores_ok))
else:
    got = "no dali-gpu row (CUDA or DALI missing)" if status.get("loader") == "ok" else status.get("loader", "not run")
    rows.append(("DALI-GPU on the training store, IMD-B views (RGB + flow)", got, ">= 300 clips/s", "not measured"))
if gpu_store and pyav_source:
    ratio = gpu_store[0] / pyav_source[0]
    rows.append(("DALI-GPU on the store vs PyAV x8 on the source clips", f"{ratio:.2f}x ({gpu_store[0]:.1f} vs "
                 f"{pyav_source[0]:.1f})", ">= 5x", verdict(ratio, 5.0)))

fn_ = out / "flow_nvof.txt"
if fn_.is_file():
    got = False
    for line in fn_.read_text().splitlines():
        m = re.match(r"grid (\d+) preset ([\d.]+): mean EPE ([\d.]+) px over (\d+) clips, .*; ([\d.]+) GPU ms a pair", line)
        if m:
            got = True
            epe = float(m.group(3))
            rows.append((f"fn.optical_flow grid {m.group(1)} preset {m.group(2)}: mean EPE vs DIS medium "
                         f"({m.group(4)} real clips)", f"{epe:.3f} px, {m.group(5)} GPU ms a pair", "<= 0.5 px",
                         "met" if epe <= 0.5 else f"MISSED by {epe - 0.5:.3f} px"))
    if not got:
        rows.append(("fn.optical_flow (OFA)", fn_.read_text().strip().splitlines()[-1][:100], "<= 0.5 px EPE",
                     "not measured"))
elif "nvof" in status:
    rows.append(("fn.optical_flow (OFA)", status["nvof"], "<= 0.5 px EPE", "not measured"))

fd = out / "flow_dis_cpu.txt"
if fd.is_file():
    for line in fd.read_text().splitlines():
        m = re.match(r"\|\s*(medium \(25:5\)|[\d:]+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|", line)
        if m:
            rows.append((f"DIS {m.group(1)}, CPU ms a frame pair of the real clip, this host",
                         f"{m.group(2)} ms ({m.group(3)} of medium)", "dev VM 2026-11-28: medium 14.6 ms", "-"))
elif "flowcpu" in status:
    rows.append(("DIS medium CPU ms a pair, this host", status["flowcpu"], "", "not measured"))

ts = out / "train_step.json"
if ts.is_file():
    data = json.loads(ts.read_text())
    res = {r["kernels"]: r for r in data["results"] if "error" not in r}
    if data["meta"].get("matmul_tflops"):
        rows.append(("bf16 8192^3 matmul", f"{data['meta']['matmul_tflops']:.0f} TFLOP/s", "", "-"))
    for r in data["results"]:
        if "error" in r:
            rows.append((f"train step, kernels={r['kernels']}", f"failed: {r['error'][:80]}", "", "failed"))
    for k, r in res.items():
        mem = r.get("peak_mem_gib", r.get("peak_rss_gib"))
        rows.append((f"train step {data['meta']['preset']} kernels={k}",
                     f"{r['steps_per_s']:.2f} steps/s, {mem:.1f} GiB peak"
                     + (f", MFU {r['mfu_vs_datasheet']:.1%} of 989" if r.get("mfu_vs_datasheet") else "")
                     + (f" / {r['mfu_vs_matmul']:.1%} of matmul" if r.get("mfu_vs_matmul") else "")
                     + f", {r['optimizer']}, {r['precision']}", "", "-"))
    if "triton" in res and "torch" in res:
        ratio = res["triton"]["steps_per_s"] / res["torch"]["steps_per_s"]
        rows.append(("train step triton / eager", f"{ratio:.3f}x", ">= 1.15x", verdict(ratio, 1.15)))
    else:
        rows.append(("train step triton / eager", "a row is missing", ">= 1.15x", "not measured"))
else:
    rows.append(("train step triton / eager", status.get("train", "not run"), ">= 1.15x", "not measured"))

e2e = out / "e2e.json"  # the e2e step: the train step fed by the loader against random batches
if e2e.is_file():
    data = json.loads(e2e.read_text())
    by_row = {r["row"]: r for r in data["results"]}
    for r in data["results"]:
        if "error" in r:
            rows.append((f"e2e {r['row']}", f"failed: {r['error'][:80]}", "", "failed"))
    for c in data["ratios"]:
        if c["what"].startswith("loader-fed"):
            fed = by_row[c["rows"][0]]
            rows.append((f"{data['meta']['preset']} end to end, {c['what']}, micro batch {fed['micro_batch']}",
                         f"{c['ratio']:.3f}x; the step waited {fed['input_wait_share']:.1%} of its time for its "
                         f"batch; {fed['cpu_cores_busy']:.1f} CPU cores busy; {fed['loader']['backend']}, tensors "
                         f"on {fed['loader']['tensors_on']}", f">= {c['target']}x", verdict(c["ratio"], c["target"])))
elif "e2e" in status:
    rows.append(("end to end, loader-fed / random batches", status["e2e"], ">= 0.9x", "not measured"))

lines = ["| step | status | seconds |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in steps]
lines += ["", "| check | measured | target | verdict |", "|---|---|---|---|"]
lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
text = "\n".join(lines)
if (out / "trainstep.md").is_file():  # the trainstep step's own tables
    text += "\n\n" + (out / "trainstep.md").read_text()
if (out / "e2e.md").is_file():  # the e2e step's table
    text += "\n\n" + (out / "e2e.md").read_text()
atomic_write_text(out / "summary.md", text + "\n")  # rewritten after every step: never half of one
print(text)
PY
}

export -f check_wheels install_wheels make_h264_dataset loader_data loader_step nvof_step trainstep_step
export -f replicate_train e2e_step prepared_done summary
export PY REPO OUT WORK DRY BUDGET T0

main() {
    preflight
    if want wheels; then
        if [ "$DRY" = 1 ]; then
            run_step wheels 60 check_wheels
        else
            run_step wheels 120 install_wheels
        fi
        # install_wheels ran in a child shell; set the path it installed to for the later steps.
        if [ "$DRY" != 1 ] && [ -d /tmp/site ]; then export PYTHONPATH="$REPO:/tmp/site"; fi
    fi
    if want tests; then
        # pytest-xdist (in the GPU image) spreads the Triton compilations over the CPUs.
        local par=""
        [ "$DRY" != 1 ] && "$PY" -c "import xdist" >/dev/null 2>&1 && par="-n 8"
        run_step tests "$([ "$DRY" = 1 ] && echo 420 || echo 150)" bash -c "set -o pipefail; '$PY' -m pytest -q -p no:cacheprovider $par tests/kernels 2>&1 | tee '$WORK/pytest.txt'"
    fi
    if want kbench; then
        # torch.compile of every shape takes minutes; its column comes from the last step, kbench_compile.
        run_step kbench 120 "$PY" -m imd_kernels.bench --no-compile --json "$OUT/kernels_bench.json"
    fi
    if want train; then
        if [ "$DRY" = 1 ]; then
            # The Triton row runs through the interpreter here: 7 to 18 s a step at micro batch 2.
            run_step train 540 "$PY" benchmarks/train_step_bench.py --preset tiny --steps 3 --warmup 0 \
                --backend-timeout 240 --out "$OUT/train_step.json"
        else
            # Eager first, then Triton, each in its own process with its own limit, so a hang in one
            # still leaves the other's row.
            run_step train 200 "$PY" benchmarks/train_step_bench.py --preset imd_b --backend-timeout 85 \
                --out "$OUT/train_step.json"
        fi
    fi
    if want flowcpu; then
        # DIS medium's CPU time a frame pair on this host's cores, the bulk of prepare's cost: the
        # prepare target (4 core-s a 10-s clip) assumed a quiet core; the development VM's run 2-3x
        # slower (BENCHMARKS.md, "Flow format 2 through the scale benchmark").
        if ls .gpuval/*.mkv >/dev/null 2>&1; then
            run_step flowcpu 90 bash -c "set -o pipefail; '$PY' benchmarks/flow_bench.py dis --clips .gpuval --variants 16:3,25:0 --pairs 150 2>&1 | tee '$OUT/flow_dis_cpu.txt'"
        else
            skip_step flowcpu "no real clip in .gpuval (bash benchmarks/gpu_validate.sh --fetch-wheels copies one)"
        fi
    fi
    if want loader; then
        if ! "$PY" -c "import nvidia.dali" >/dev/null 2>&1; then
            skip_step loader "nvidia.dali does not import here (DALI travels in parts .dali1..N, one per call on one warm machine: docs/gpu_validation.md; not all staged yet). DALI-GPU vs PyAV NOT measured"
        elif [ ! -f benchmarks/loader_bench.py ]; then
            skip_step loader "benchmarks/loader_bench.py not in this tree"
        else
            run_step loader 240 loader_step
        fi
    fi
    if want nvof; then
        if [ "$DRY" = 1 ] || "$PY" -c "import nvidia.dali" >/dev/null 2>&1; then
            # Dry: the script prints that it needs CUDA and exits 0.
            run_step nvof 90 nvof_step
        else
            skip_step nvof "nvidia.dali does not import here (DALI travels in parts .dali1..N: docs/gpu_validation.md). fn.optical_flow NOT measured"
        fi
    fi
    if want e2e; then
        if [ "$DRY" != 1 ] && ! "$PY" -c "import nvidia.dali" >/dev/null 2>&1; then
            skip_step e2e "nvidia.dali does not import here (DALI travels in parts .dali1..N: docs/gpu_validation.md). IMD-B from the store through the loader NOT measured"
        elif prepared_done "$WORK/h264"; then
            run_step e2e 215 e2e_step  # the loader step's data is ready: the links and the bench's 200 s
        else  # the data built (or its prepare finished) first
            run_step e2e "$([ "$DRY" = 1 ] && echo 400 || echo 420)" e2e_step
        fi
    fi
    if want trainstep; then
        # Its parts watch their own budget (330 s on the GPU), inside the step's limit.
        if [ "$DRY" = 1 ]; then
            run_step trainstep 1300 trainstep_step 1280
        else
            run_step trainstep 345 trainstep_step 330
        fi
    fi
    if want kbench_compile; then  # whatever budget is left: the torch.compile column at IMD-B shapes
        run_step kbench_compile 300 "$PY" -m imd_kernels.bench --shapes imd_b --json "$OUT/kernels_bench_compile.json"
    fi
    echo
    echo "== summary $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(($(date +%s) - T0)) s in all; log: $LOG"
    summary
    ! grep -qE $'\t(FAILED|TIMEOUT)' "$WORK/steps.tsv"  # exit status 1 when a step failed or timed out
}

# One compound command: bash has read all of it before it runs, so editing this file meanwhile is safe.
{ main 2>&1 | tee "$LOG"; rc=${PIPESTATUS[0]}; rm -rf "$WORK"; exit "$rc"; }
