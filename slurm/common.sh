# Sourced by the sbatch templates: environment, rendezvous, logs and requeue, in one place.
# Not a job script itself.

# The templates run from the repository root (sbatch copies the script into Slurm's spool, so
# its own path is unknown): submit from the root, or set R1HPC_ROOT.
R1HPC_ROOT="${R1HPC_ROOT:-$SLURM_SUBMIT_DIR}"
cd "$R1HPC_ROOT" || { echo "[r1hpc] cannot cd to R1HPC_ROOT=$R1HPC_ROOT" >&2; exit 2; }
[ -n "${R1HPC_VENV:-}" ] && source "$R1HPC_VENV/bin/activate"
R1HPC="${R1HPC:-r1hpc}"  # the command; e.g. R1HPC="python -m r1hpc.cli"

# One log per job (the #SBATCH --output file) and one per rank (srun --output below).
R1HPC_LOG_DIR="${R1HPC_LOG_DIR:-logs}"
mkdir -p "$R1HPC_LOG_DIR"
JOB_TAG="${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}"
JOB_TAG="${JOB_TAG:-$SLURM_JOB_ID}"
RANK_LOG="$R1HPC_LOG_DIR/${SLURM_JOB_NAME:-r1hpc}-${JOB_TAG}-rank%t.log"

# Rendezvous: the first node of the allocation (where this batch script runs) hosts the store.
# Its NodeAddr, so renamed or fake nodes work too; the port is derived from the job id.
first_node="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"
MASTER_ADDR="${MASTER_ADDR:-$(scontrol show node "$first_node" -o | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)}"
MASTER_ADDR="${MASTER_ADDR:-$first_node}"
MASTER_PORT="${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"
export MASTER_ADDR MASTER_PORT

# Threads per rank: what Slurm gave each task (torch otherwise takes every core of the node).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"

# NCCL / InfiniBand knobs. Defaults are NCCL's own; set them in the environment you submit from
# (sbatch exports it) when your fabric needs them:
#   NCCL_IB_HCA=mlx5_0,mlx5_1,...   which HCAs to use (list the IB ports on a node: ibstat)
#   NCCL_SOCKET_IFNAME=ib0|eth0     interface for NCCL's bootstrap and the socket transport
#   NCCL_IB_GID_INDEX=3             RoCE clusters: the GID of the RoCE v2 address
#   NCCL_NET_GDR_LEVEL=PHB          GPUDirect RDMA distance; NCCL_IB_TIMEOUT=22 on congested fabrics
#   NCCL_DEBUG=INFO                 prints the chosen transport per ring (first thing to check on a hang)
#   TORCH_NCCL_ASYNC_ERROR_HANDLING=1  a failed collective kills the job instead of hanging it
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"

# Resume from the newest complete checkpoint by default (a requeued job continues).
# R1HPC_RESUME=none starts fresh; R1HPC_RESUME="" passes no --resume at all.
R1HPC_RESUME="${R1HPC_RESUME-auto}"
RESUME_ARGS=()
[ -n "$R1HPC_RESUME" ] && RESUME_ARGS=(--resume "$R1HPC_RESUME")

# the exit code of a step that saved a checkpoint after USR2/SIGTERM, defined once in r1hpc
EXIT_CODE_REQUEUE="$(python -c 'from r1hpc.checkpoint.preemption import EXIT_CODE_REQUEUE as c; print(c)')" || { echo "[r1hpc] python cannot import r1hpc (set R1HPC_VENV)" >&2; exit 2; }

echo "[r1hpc] job ${JOB_TAG} on ${SLURM_JOB_NODELIST}: ${SLURM_NNODES:-1} node(s) x ${SLURM_NTASKS_PER_NODE:-?} task(s), rendezvous ${MASTER_ADDR}:${MASTER_PORT}, rank logs ${RANK_LOG}"

# Run the step on every task; EXIT_CODE_REQUEUE (checkpoint saved on a preemption or time-limit signal)
# requeues this job, which then resumes; any other failure fails the job.
run_step() {
  srun --kill-on-bad-exit=1 --open-mode=append --output="$RANK_LOG" --error="$RANK_LOG" "$@"
  local rc=$?
  if [ "$rc" = "$EXIT_CODE_REQUEUE" ]; then
    echo "[r1hpc] step saved a checkpoint and asked for a requeue; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  [ "$rc" = 0 ] || echo "[r1hpc] step failed with exit code $rc; see $RANK_LOG" >&2
  return "$rc"
}
