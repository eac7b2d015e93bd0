#!/bin/bash
# Train with flowerfast on several machines of a SLURM cluster: one torchrun per machine, each
# starting one process per GPU; torchrun's c10d rendezvous on the first machine joins them.
#
#   sbatch examples/slurm_ddp.sh photos/            (edit the #SBATCH lines for your cluster)
#
# The photos (and, to resume, the run folder) must be at the same path on every machine: a shared
# file system. Only rank 0 writes the run folder. To resume an interrupted job, submit it again
# with RESUME=runs/<run>: sbatch --export=ALL,RESUME=runs/resnet152-2x4 examples/slurm_ddp.sh photos/
#
#SBATCH --job-name=flowerfast
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=04:00:00
#SBATCH --output=flowerfast-%j.log

set -euo pipefail

DATA=${1:?usage: sbatch examples/slurm_ddp.sh PHOTOS_DIR}
GPUS_PER_NODE=${GPUS_PER_NODE:-4}
OUT=${OUT:-runs/resnet152-${SLURM_JOB_ID}}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export OMP_NUM_THREADS=$(( SLURM_CPUS_PER_TASK / GPUS_PER_NODE ))
export FLOWERFAST_DIST_TIMEOUT=${FLOWERFAST_DIST_TIMEOUT:-900}  # seconds a collective waits for a process

if [ -n "${RESUME:-}" ]; then
    ARGS=(train --resume "$RESUME")
else
    # --bs is per process: 4 machines x 8 GPUs x 32 would be an effective batch of 1024.
    ARGS=(train --data "$DATA" --arch resnet152 --size 224 --epochs 10 --bs 32 --workers 8 --out "$OUT")
fi

srun torchrun \
    --nnodes="$SLURM_NNODES" \
    --nproc_per_node="$GPUS_PER_NODE" \
    --rdzv_id="$SLURM_JOB_ID" \
    --rdzv_backend=c10d \
    --rdzv_endpoint="$HEAD:29500" \
    -m flowerfast "${ARGS[@]}"
