# Shared body of slurm/train_b.sh and slurm/train_l.sh (sourced, not run): submits the calling
# script when it runs outside Slurm, otherwise starts one training rank per task with srun and
# requeues the job when training stopped for a preemption signal. See train_l.sh for the variables.

imd_submit_self() {  # outside a job: sbatch the calling script with the allocation from IMD_*
  local script=$1; shift
  local args=(--nodes="$IMD_NODES" --ntasks-per-node="$IMD_TASKS_PER_NODE" --gpus-per-node="$IMD_GPUS_PER_NODE"
              --cpus-per-task="$IMD_CPUS_PER_TASK" --time="$IMD_TIME")
  [ -n "${IMD_PARTITION:-}" ] && args+=(--partition="$IMD_PARTITION")
  [ -n "${IMD_ACCOUNT:-}" ] && args+=(--account="$IMD_ACCOUNT")
  [ -n "${IMD_JOB_NAME:-}" ] && args+=(--job-name="$IMD_JOB_NAME")
  export IMD_REPO=${IMD_REPO:-$here}  # the job cds here whatever directory sbatch ran from
  echo "+ sbatch ${args[*]} $* $script"
  exec sbatch "${args[@]}" "$@" "$script"
}

imd_train_job() {  # inside the job (batch step)
  : "${IMD_DATA:?set IMD_DATA to a prepared dataset directory (python -m imd_hpc synth / prepare)}"
  cd "${IMD_REPO:-${SLURM_SUBMIT_DIR:-.}}"
  local py=${IMD_PYTHON:-}
  if [ -z "$py" ]; then
    if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
  fi
  local run_dir=${IMD_RUN_DIR:-runs/${IMD_PRESET}-${SLURM_JOB_ID}}
  local sets=()
  # shellcheck disable=SC2086
  [ -n "${IMD_SET:-}" ] && for kv in $IMD_SET; do sets+=(--set "$kv"); done

  # Rendezvous: each rank derives it from the step's environment (imd_hpc/engine/dist.py: the
  # first node of the allocation, port 15000 + job id % 20000); IMD_MASTER_PORT overrides the port.
  if [ -n "${IMD_MASTER_PORT:-}" ]; then export MASTER_PORT=$IMD_MASTER_PORT; fi
  export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
  export PYTHONUNBUFFERED=1

  echo "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): ${SLURM_NNODES} node(s) x" \
       "${SLURM_NTASKS_PER_NODE:-?} task(s), run dir $run_dir"
  local rc=0
  srun --kill-on-bad-exit=1 "$py" -m imd_hpc train --preset "$IMD_PRESET" --data "$IMD_DATA" \
      --run-dir "$run_dir" --ds-config "$IMD_DS_CONFIG" --resume "${sets[@]}" || rc=$?

  # Exit code 75 (signals.EXIT_REQUEUE) means "stopped for a cause outside the job, resumable": a
  # checkpoint written on SIGUSR1/SIGTERM, or a collective that failed because a peer rank was
  # lost (the job then resumes from the last checkpoint). Once one rank has exited, srun
  # terminates the others and may report their code instead, so the marker file the engine
  # writes (rank 0) counts as well. A lost node is also requeued by Slurm itself (--requeue).
  if [ "$rc" -eq 75 ] || { [ "$rc" -ne 0 ] && [ -f "$run_dir/preempted.json" ]; }; then
    if [ "${SLURM_RESTART_COUNT:-0}" -lt "${IMD_MAX_REQUEUES:-3}" ]; then
      local why="exit code $rc"
      [ -f "$run_dir/preempted.json" ] && why=$(tr -d '\n' <"$run_dir/preempted.json")
      echo "training stopped to be resumed ($why); requeueing job $SLURM_JOB_ID"
      scontrol requeue "$SLURM_JOB_ID"
      exit 0
    fi
    echo "stopped again after ${SLURM_RESTART_COUNT} requeues (IMD_MAX_REQUEUES); resubmit with --resume"
  fi
  exit "$rc"
}
