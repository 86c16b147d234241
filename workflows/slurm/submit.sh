#!/usr/bin/env bash
# Submit a batch conversion to SLURM: this job runs the Dask scheduler and the driver on one CPU
# core; the driver submits the GPU worker jobs described in configs/slurm.yaml.
#
#   sbatch workflows/slurm/submit.sh /data/stacks /data/fused [wsi-fusion batch options...]
#   e.g. sbatch workflows/slurm/submit.sh /data/stacks /data/fused --fuser msegnet --precision bf16
#
# Rerun the same command after a failure or a time-out: finished slides are skipped and the
# interrupted ones resume from their tile caches.
#SBATCH -J wsi-fusion-driver
#SBATCH -c 2
#SBATCH --mem=8G
#SBATCH -t 24:00:00
set -euo pipefail
if [ "$#" -lt 2 ]; then
    echo "usage: sbatch $0 SOURCE OUTDIR [wsi-fusion batch options...]" >&2
    exit 2
fi
source=$1 outdir=$2
shift 2
cd "${SLURM_SUBMIT_DIR:-.}"
mkdir -p slurm-logs
source .venv/bin/activate
exec python workflows/slurm/run_on_slurm.py \
    --slurm-config "${WSI_FUSION_SLURM_CONFIG:-configs/slurm.yaml}" \
    -- batch "$source" -o "$outdir" "$@"
