# slurm/run_forwarding.sh - sourced by the sbatch scripts (from the repo root) to run their one command.
#
# `run_forwarding CMD ARGS...` runs CMD in the background while this shell waits (bash runs a trap only between
# commands, so the sbatch script's traps can call `forward SIG` to pass SLURM's signals on to CMD), and sets rc to
# CMD's exit status. That status is not taken from `wait`: a signal that interrupts `wait` just as CMD exits can
# make bash lose it (bash 5.2 then reports 138 or -1 for a run that exited 0: a finished run would be a failed
# job). So a subshell runs CMD in its foreground (there bash holds its traps until the command ends) and writes
# the status to a file; sh writes the pid it keeps when it execs CMD, which `forward` signals.

RUN=$(mktemp -d) || { echo "run_forwarding.sh: mktemp -d failed" >&2; exit 2; }
trap 'rm -rf "$RUN"' EXIT

forward() { local pid; read -r pid 2>/dev/null < "$RUN/pid" && kill "-$1" "$pid" 2>/dev/null || true; }

run_forwarding() {
    ( trap : USR1 TERM   # outlive scancel's TERM to every process of the job: CMD gets its own
      sh -c 'echo $$ > "$0"; exec "$@"' "$RUN/pid" "$@"
      st=$?; rm -f "$RUN/pid"; echo "$st" > "$RUN/status" ) &
    local sub=$!
    while kill -0 "$sub" 2>/dev/null; do wait "$sub"; done   # a trapped signal ends `wait` early
    if [[ -s $RUN/status ]]; then
        rc=$(<"$RUN/status")
    else
        echo "run_forwarding.sh: no exit status recorded for $1 (the shell running it was killed)" >&2
        rc=1
    fi
}
