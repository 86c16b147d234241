#!/usr/bin/env bash
# One call on a lent GPU machine: set up, GPU tests, bench_gpu --quick, then the training runs
# that fit the time left (paper widths, --preset h100-8min), results packed under $OUT.
#
#   bash workflows/gpu_run.sh [--dry-run] [--budget-s 540] [--skip tests,bench]
#                             [--only cgan_single,msegnet,...] [--train-s 480]
#   bash workflows/gpu_run.sh --fetch-wheels     # here, once: the wheels the GPU machine lacks
#
# Steps, each logged with its wall time into $OUT/gpu_run.log:
#   1. setup   python3 of the GPU image (CUDA torch) + the carried wheels (.whl/) in /tmp/site;
#              checks that torch sees the GPU and that wsi_fusion and its dependencies import.
#   2. tests   pytest -m gpu on the test files that have GPU tests.
#   3. bench   benchmarks/bench_gpu.py --quick (at most 300 s, or what the budget leaves).
#   4. train   workflows/train_*.py --device cuda --preset h100-8min, in the order of RUNS
#              below (most valuable first), each with --max-seconds cut to the time left; a run
#              that would get under MIN_TRAIN_S is skipped. The preset writes the weights when
#              the budget stops a run (summary: stopped_at_budget, steps_per_second).
#   5. pack    $OUT/summary.json (every step: rc, seconds; every run: its training summary),
#              $OUT/gpu_run.log, $OUT/bench_gpu.json, and $OUT/results.tgz.part-aa, -ab, ...
#              (a tar.gz of the weights, summaries and loss logs, with their repository paths,
#              split in 15 MiB parts: the device tool returns at most 8 files of 16 MiB).
#
# --dry-run rehearses every step on this CPU: the local .venv, an offline install check of the
# wheels for the GPU's Python 3.12, the GPU tests (they skip), bench_gpu --cpu-dry-run, and each
# training run for a few steps at the preset's tiny dry-run sizes (--dry-run), OUT defaulting to
# scratch/gpu_run_out. Run it as:
#   OMP_NUM_THREADS=1 nice -n 10 bash workflows/gpu_run.sh --dry-run
#
# With the device tool (see workflows/README.md, "Training on a lent GPU"): fetch the wheels once
# (--fetch-wheels), then one `run` call with carry [".whl"], timeout_s 600 and the command
#   bash workflows/gpu_run.sh --budget-s 540
# and afterwards, here, in the repository root:
#   cat <files_at>/results.tgz.part-* | tar xzf -
# which puts the weights at their config paths (models/<fuser>/<name>.paper.safetensors) and the
# summaries and loss logs under scratch/gpu/.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2

PRESET=h100-8min
BUDGET_S=540          # the whole script; the device tool allows 600 s per command
TRAIN_S=480           # per training run at most (the preset's own max_seconds)
MIN_TRAIN_S=120       # a training run needs at least this much of the budget to start
RUN_OVERHEAD_S=45     # start-up of a training process (imports, CUDA, forking workers)
PACK_RESERVE_S=20     # kept for packing the results
BENCH_S=300
DRY_RUN=0
SKIP=""
ONLY=""
FETCH=0

#: name | workflow and its config. The order is the value order: the single-plane cGAN is the
#: headline target of issue 13, then the decision-map fusers, the few-plane cGAN, and the paper's
#: ResNet-50 BM (the presets train the generators against the shipped lite BM).
RUNS=(
  "cgan_single|workflows/train_cgan.py --config configs/train_cgan_single.yaml"
  "msegnet|workflows/train_msegnet.py"
  "fmb_net|workflows/train_fmb_net.py"
  "gacn|workflows/train_gacn.py"
  "acnn|workflows/train_acnn.py"
  "cgan_few|workflows/train_cgan.py --config configs/train_cgan_few.yaml"
  "blurmask|workflows/train_blurmask.py"
)

#: Wheels for what the GPU image lacks (versions as tested in .venv here); see --fetch-wheels.
WHEELS=(
  pydantic pydantic-core annotated-types typing-inspection PyWavelets zarr numcodecs donfig
  google-crc32c imagecodecs openslide-python openslide-bin dask distributed partd locket tblib
  zict tiffslide tornado
)

config_of() {  # the run config of a RUNS command: its --config, else configs/<script>.yaml
  if [[ "$1" == *--config* ]]; then
    local rest="${1##*--config }"
    echo "${rest%% *}"
  else
    local script="${1%% *}"
    echo "configs/$(basename "$script" .py).yaml"
  fi
}

#: Linux x86-64 wheel tags the GPU machine's Python 3.12 takes (pip matches each exactly).
PLATFORMS=(
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
  --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64
)

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --budget-s) BUDGET_S="$2"; shift ;;
    --train-s) TRAIN_S="$2"; shift ;;
    --skip) SKIP="$2"; shift ;;
    --only) ONLY="$2"; shift ;;
    --fetch-wheels) FETCH=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

# -- --fetch-wheels: here, with a package registry ----------------------------------------------
if [ "$FETCH" = 1 ]; then
  mkdir -p .whl
  specs=()
  for name in "${WHEELS[@]}"; do
    version=$(.venv/bin/python -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    [ -n "$version" ] || { echo "gpu_run.sh: $name is not installed in .venv" >&2; exit 2; }
    specs+=("$name==$version")
  done
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]}" -d .whl "${specs[@]}" || exit 1
  du -sh .whl
  grep -qx '/.whl/' .gitignore 2>/dev/null || echo "note: add /.whl/ to .gitignore" >&2
  exit 0
fi

if [ "$DRY_RUN" = 1 ]; then
  OUT="${OUT:-$ROOT/scratch/gpu_run_out}"
  DEVICE=cpu
  rm -rf "scratch/dry_run/$PRESET"  # rehearse from step 0, not a resume of the last rehearsal
else
  OUT="${OUT:?set by the device tool; for a local run set OUT=/some/folder}"
  DEVICE=cuda
fi
mkdir -p "$OUT"
rm -f "$OUT"/summary.json "$OUT"/bench_gpu.json "$OUT"/results.tgz.part-*
LOG="$OUT/gpu_run.log"
STEPS_JSON="$OUT/steps.jsonl"
: >"$LOG"
: >"$STEPS_JSON"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1

START=$(date +%s)
DEADLINE=$((START + BUDGET_S))
left() { echo $((DEADLINE - $(date +%s))); }
skipped() { [[ ",$SKIP," == *",$1,"* ]]; }
wanted() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

# One step's record: name, rc, seconds, note (JSON lines, merged into summary.json at the end).
record() {
  printf '{"step": "%s", "rc": %s, "seconds": %s, "note": "%s"}\n' "$1" "$2" "$3" "$4" \
    >>"$STEPS_JSON"
}

step() {  # step NAME TIMEOUT_S COMMAND...
  # At the limit: SIGTERM (a training loop then checkpoints and the preset writes the weights),
  # SIGKILL 30 s later.
  local name="$1" limit="$2"
  shift 2
  echo "== $(date -u +%H:%M:%S) $name (at most ${limit} s): $*"
  local began=$(date +%s)
  timeout --kill-after=30 "$limit" "$@"
  local rc=$?
  local took=$(($(date +%s) - began))
  echo "== $name: rc $rc in ${took} s"
  record "$name" "$rc" "$took" "$([ $rc = 124 ] && echo timeout)"
  return $rc
}

echo "gpu_run.sh: device $DEVICE, preset $PRESET, budget ${BUDGET_S} s, dry run $DRY_RUN," \
  "out $OUT, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

# -- 1. setup -------------------------------------------------------------------------------------
if [ "$DRY_RUN" = 1 ]; then
  PY="$ROOT/.venv/bin/python"
  [ -x "$PY" ] || PY=python3
else
  PY=python3  # the GPU image's Python, with its CUDA torch
fi

setup() {
  if [ "$DRY_RUN" = 1 ]; then
    if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
      # The GPU machine's install, checked offline for its Python (3.12) without running it.
      rm -rf /tmp/gpu_run_site_check
      python3 -m pip install -q --no-index --no-deps --no-compile --dry-run \
        --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
        --target /tmp/gpu_run_site_check .whl/*.whl || return 1
      echo "wheels: $(ls .whl/*.whl | wc -l) install offline for cp312 ($(du -sh .whl | cut -f1))"
    else
      echo "wheels: none in .whl/ (bash workflows/gpu_run.sh --fetch-wheels before a GPU run)"
    fi
  else
    if ls .whl/*.whl >/dev/null 2>&1; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || return 1
      export PYTHONPATH="/tmp/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    else
      echo "no .whl/ carried: wsi_fusion's dependencies must already be installed" >&2
      export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    # Prefetched batches travel through shared memory; a small /dev/shm makes the runs fall
    # back to drawing batches in the step (slower; recorded as prefetch_error).
    df -h /dev/shm | tail -1 || true
    echo "cpus: $(nproc)"
  fi
  "$PY" - "$DEVICE" <<'EOF'
import sys

import torch

import wsi_fusion
import wsi_fusion.pipeline  # noqa: F401  (dask, zarr, readers and writers)
import wsi_fusion.training.cgan_blurmask  # noqa: F401
import wsi_fusion.training.fmb_net  # noqa: F401

device = sys.argv[1]
if device == "cuda" and not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA device")
gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none (dry run)"
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"GPU {gpu}, wsi_fusion {wsi_fusion.__version__}")
EOF
}
# Not through step: setup exports PYTHONPATH into this shell.
echo "== $(date -u +%H:%M:%S) setup"
began=$(date +%s)
setup
rc=$?
echo "== setup: rc $rc in $(($(date +%s) - began)) s"
record setup "$rc" "$(($(date +%s) - began))" ""
[ "$rc" = 0 ] || { echo "setup failed: nothing else can run"; SETUP_FAILED=1; }

TRIED=()  # the RUNS entries this call started (their results are packed)
if [ -z "${SETUP_FAILED:-}" ]; then
  # -- 2. GPU tests -------------------------------------------------------------------------------
  if skipped tests || [ "$(left)" -lt 60 ]; then
    record tests 0 0 skipped
  else
    mapfile -t GPU_TESTS < <(grep -rlE 'mark\.gpu|marks=.*gpu' tests --include='test_*.py' | sort)
    step tests "$(($(left) < 240 ? $(left) : 240))" \
      "$PY" -m pytest -q -m gpu -p no:cacheprovider "${GPU_TESTS[@]}"
  fi

  # -- 3. bench_gpu --quick -----------------------------------------------------------------------
  limit=$(($(left) - PACK_RESERVE_S))
  [ "$limit" -gt "$BENCH_S" ] && limit=$BENCH_S
  if skipped bench || [ "$limit" -lt 30 ]; then
    record bench 0 0 skipped
  else
    if [ "$DRY_RUN" = 1 ]; then
      step bench "$limit" "$PY" benchmarks/bench_gpu.py --cpu-dry-run --quick --json "$OUT/bench_gpu.json"
    else
      step bench "$limit" "$PY" benchmarks/bench_gpu.py --quick --json "$OUT/bench_gpu.json"
    fi
  fi

  # -- 4. training, most valuable first -----------------------------------------------------------
  for entry in "${RUNS[@]}"; do
    name="${entry%%|*}"
    command="${entry#*|}"
    wanted "$name" || continue
    TRIED+=("$entry")
    remaining=$(($(left) - PACK_RESERVE_S))
    if [ "$DRY_RUN" = 1 ]; then
      # shellcheck disable=SC2086  # $command holds the script and its --config
      step "train_$name" 600 "$PY" $command --device cpu --preset "$PRESET" --dry-run \
        --no-progress
      continue
    fi
    if [ "$remaining" -lt "$MIN_TRAIN_S" ]; then
      echo "== train_$name: skipped, ${remaining} s left (< ${MIN_TRAIN_S} s)"
      record "train_$name" 0 0 "skipped: budget"
      continue
    fi
    seconds=$((remaining - RUN_OVERHEAD_S))
    [ "$seconds" -gt "$TRAIN_S" ] && seconds=$TRAIN_S
    # shellcheck disable=SC2086
    step "train_$name" "$remaining" "$PY" $command --device cuda --preset "$PRESET" \
      --max-seconds "$seconds" --no-progress
  done
fi

# -- 5. pack --------------------------------------------------------------------------------------
CONFIGS=()
for entry in ${TRIED[@]+"${TRIED[@]}"}; do
  CONFIGS+=("${entry%%|*}=$(config_of "${entry#*|}")")
done
"$PY" - "$OUT" "$PRESET" "$DRY_RUN" "$DEVICE" "$BUDGET_S" "$ROOT" "${CONFIGS[@]}" <<'EOF'
"""summary.json and the list of files to pack (weights, summaries, loss logs of every run)."""
import json
import sys
from pathlib import Path

out, preset, dry_run, device, budget, root = sys.argv[1:7]
out, root = Path(out), Path(root)
steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines() if line]
runs = {}
pack = []
left_out = []
packed_bytes = 0
PACK_LIMIT = 56 * 2**20  # weights, in the order of RUNS (value order)
try:
    from wsi_fusion.training.config import resolve_config_data
except Exception as err:  # setup failed: still write what is known
    resolve_config_data = None
    print(f"pack: cannot read the run configs ({err})")
configs = dict(arg.split("=", 1) for arg in sys.argv[7:])
for name, config in configs.items():
    if resolve_config_data is None:
        break
    data, _ = resolve_config_data(root / config, preset, dry_run == "1")
    checkpoint = Path(data["checkpoint"])
    summary = checkpoint.with_suffix(".summary.json")
    losses = checkpoint.with_suffix(".log.json")
    if (root / summary).exists():
        runs[name] = json.loads((root / summary).read_text())
    for path in (summary, losses):
        if (root / path).exists():
            pack.append(str(path))
    weights = root / data["output"]
    if weights.exists():
        size = weights.stat().st_size
        if packed_bytes + size > PACK_LIMIT:  # the device tool returns 64 MiB in all
            left_out.append(str(data["output"]))
        else:
            packed_bytes += size
            pack.append(str(data["output"]))
result = {
    "device": device,
    "preset": preset,
    "dry_run": dry_run == "1",
    "budget_s": int(budget),
    "steps": steps,
    "runs": runs,
    "packed": pack,
    "weights_left_out": left_out,
}
(out / "summary.json").write_text(json.dumps(result, indent=1))
(out / "pack.list").write_text("".join(f"{p}\n" for p in pack))
for s in steps:
    print(f"{s['step']:>18}: rc {s['rc']}, {s['seconds']} s {s['note']}")
for name, r in runs.items():
    final = r.get("final") or {}
    print(f"{name:>18}: {r.get('steps_done')} steps, {r.get('steps_per_second')} steps/s, "
          f"sha256 {str(r.get('sha256'))[:12]}, final {final}")
EOF
if [ -s "$OUT/pack.list" ]; then
  rm -f "$OUT"/results.tgz.part-*
  tar czf - -T "$OUT/pack.list" | split -b 15m - "$OUT/results.tgz.part-"
  echo "packed $(wc -l <"$OUT/pack.list") files into $(ls "$OUT"/results.tgz.part-* | wc -l) part(s)"
fi
failed=$(grep -c '"rc": [1-9]' "$OUT/steps.jsonl")
rm -f "$OUT/pack.list" "$OUT/steps.jsonl"
echo "gpu_run.sh: done in $(($(date +%s) - START)) s, $failed step(s) failed; $OUT/summary.json"
[ "$failed" = 0 ]
