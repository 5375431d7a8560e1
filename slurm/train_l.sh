#!/usr/bin/env bash
#SBATCH --job-name=imd-l
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=10
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=USR1@120
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
#
# IMD-L training with DeepSpeed (ZeRO-2, bf16): one rank per GPU, launched by srun.
# Run from the repository root:
#
#   IMD_DATA=/data/k400 sbatch slurm/train_l.sh                    # allocation of the #SBATCH lines
#   IMD_DATA=/data/k400 IMD_NODES=8 bash slurm/train_l.sh          # allocation from IMD_* (self-submits)
#
# Tiny run on a laptop / CI (slurm/local-cluster.sh start): 2 CPU ranks on gloo. The local
# cluster's site policy (cli_filter/lua, docs/training.md) turns the GPU requests above into 0 and
# caps --cpus-per-task to a node, so the line runs as written, one rank per node on two nodes:
#
#   IMD_PRESET=tiny IMD_DATA=/tmp/synth sbatch --nodes=2 --ntasks-per-node=1 slurm/train_l.sh
#
# or with the allocation spelled out (any Slurm without GPUs), either form:
#
#   IMD_PRESET=tiny IMD_DATA=/tmp/synth sbatch --nodes=1 --ntasks-per-node=2 --gpus-per-node=0 \
#       --cpus-per-task=1 --time=00:20:00 slurm/train_l.sh
#   IMD_PRESET=tiny IMD_DATA=/tmp/synth IMD_NODES=1 IMD_TASKS_PER_NODE=2 IMD_GPUS_PER_NODE=0 \
#       IMD_CPUS_PER_TASK=1 IMD_TIME=00:20:00 bash slurm/train_l.sh
#
# sbatch reads the #SBATCH lines before the job sees any variable, so under `sbatch` the
# allocation changes through sbatch options (command line wins over #SBATCH); `bash` builds
# those options from the IMD_* allocation variables and submits this script itself.
#
# Environment (defaults in brackets):
#   IMD_DATA            prepared dataset directory [required]
#   IMD_PRESET          config preset [imd_l]
#   IMD_SET             overrides, space separated, e.g. "model.alpha=0.5 train.epochs=3" []
#   IMD_RUN_DIR         run directory; a requeued job resumes in it [runs/<preset>-<job id>]
#   IMD_DS_CONFIG       DeepSpeed JSON merged over the generated config [slurm/ds_config_l.json]
#   IMD_PYTHON          interpreter [.venv/bin/python if present, else python3]
#   IMD_REPO            repository root [$SLURM_SUBMIT_DIR]
#   IMD_MAX_REQUEUES    self-requeues after a preemption signal [3]
#   IMD_MASTER_PORT     rendezvous port [15000 + job id % 20000]
#   allocation (used by `bash slurm/train_l.sh`; with sbatch pass the options instead):
#   IMD_NODES [4]  IMD_GPUS_PER_NODE [8]  IMD_TASKS_PER_NODE [GPUs per node, or 1 with no GPUs]
#   IMD_CPUS_PER_TASK [10]  IMD_TIME [24:00:00]  IMD_PARTITION []  IMD_ACCOUNT []  IMD_JOB_NAME []
#
# Preemption: Slurm sends SIGUSR1 120 s before the time limit (and SIGTERM on preemption); the
# ranks write a checkpoint and exit with code 75; this script then runs `scontrol requeue` and
# the requeued job continues from that checkpoint (--resume).
set -euo pipefail
IMD_PRESET=${IMD_PRESET:-imd_l}
IMD_DS_CONFIG=${IMD_DS_CONFIG:-slurm/ds_config_l.json}
IMD_NODES=${IMD_NODES:-4}
IMD_GPUS_PER_NODE=${IMD_GPUS_PER_NODE:-8}
IMD_TASKS_PER_NODE=${IMD_TASKS_PER_NODE:-$(( IMD_GPUS_PER_NODE > 0 ? IMD_GPUS_PER_NODE : 1 ))}
IMD_CPUS_PER_TASK=${IMD_CPUS_PER_TASK:-10}
IMD_TIME=${IMD_TIME:-24:00:00}
here=${IMD_REPO:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}
# shellcheck source=slurm/launch.sh
source "$here/slurm/launch.sh"
if [ -z "${SLURM_JOB_ID:-}" ]; then imd_submit_self "${BASH_SOURCE[0]}" "$@"; fi
imd_train_job
