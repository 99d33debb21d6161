# Sourced by the benchmarks that train on two ranks of this machine (scaling_check.sh,
# grad_overlap.sh) after they set STEPS_DEFAULT: the repository root as working folder, the shared
# settings (BUILD, CONFIG, DATA, STEPS, REPS, overridable from the environment) and MPI, the mpirun
# command line for 2 ranks (allowed as root).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
unset OPENBLAS_CORETYPE
BUILD="${BUILD:-build}"
CONFIG="${CONFIG:-configs/paper/gshard.json}"
DATA="${DATA:-data/brown-bpe2k}"
STEPS="${STEPS:-$STEPS_DEFAULT}"
REPS="${REPS:-3}"
[ -d "$DATA" ] || { echo "$(basename "$0"): no prepared data at $DATA (scripts/quickstart.sh prepares it, or set DATA)"; exit 1; }
MPI=(mpirun --oversubscribe -np 2)
[ "$(id -u)" = 0 ] && MPI=(mpirun --allow-run-as-root --oversubscribe -np 2)
