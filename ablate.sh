#!/usr/bin/env bash
# ablate.sh - run the gpt-ablate ablation: 7 experiments x N seeds, then write the report.
#
# Run `bash ablate.sh -h` for usage. This file is the ONE place that defines the
# experiment list and the mapping "task index -> (experiment, seed)";
# slurm/ablate.sbatch calls `bash ablate.sh --task $SLURM_ARRAY_TASK_ID ...`.
set -euo pipefail

# ---------------------------------------------------------------------------
# The experiments, in task order. Each one sets exactly the switches listed in
# switches_for(); every run gets ALL five switches explicitly on the command
# line, so a config file can never leak a switch into the baseline.
EXPERIMENTS=(baseline swiglu rope warmup cosine rmsnorm all)
SWITCHES=(use_swiglu use_rope use_rmsnorm use_warmup use_cosine)
# ---------------------------------------------------------------------------

PROG=ablate.sh
PY=${PYTHON:-python}            # interpreter (tests point PYTHON at a fake)
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
    cat <<EOF
usage: bash ablate.sh [--seeds N] [--out DIR] [options] [config/X.py] [--key=value ...]

Runs the experiments ${EXPERIMENTS[*]}
(all = all five switches on), N seeds each (seeds 1..N), into DIR/<experiment>/seed<k>/,
then writes the report with: python plot.py DIR/<exp>/seed<k>/log.txt ... --report DIR/report.pdf

Every other argument goes to train.py unchanged (same data, validation set, token budget
and settings for every run). After them ablate.sh appends --out_dir=... --seed=k and all five
switches (${SWITCHES[*]}) explicitly =True/=False.

  --seeds N       seeds per experiment (default 1)
  --out DIR       output root (default out/ablate)
  --task I        run only task I = exp_index*N + (seed-1), 0 <= I < 7*N, experiments in the
                  order above (used by slurm/ablate.sbatch); no report
  --dry-run       print the train.py commands that would run; run nothing
  --print-slurm   print the sbatch command line for the job array, then each task's train.py
                  command (as '# task I ...' comment lines); run nothing
  --no-report     do not run plot.py at the end (a missing plot.py only warns)
  -h, --help      this text
  --              everything after it goes to train.py

A finished run (results.json present) is skipped; an interrupted one (ckpt.pt present, no
results.json) is resumed with --resume=True. If a run exits non-zero, ablate.sh says which and
exits with the same code (75 = preempted/stopped after checkpoint: requeue and rerun to resume;
2 = config error; 3 = NaN/inf loss; 1 = crash). SIGUSR1/SIGTERM received by ablate.sh are
forwarded to the running train.py (SIGINT as SIGTERM); no further run starts after one. The interpreter is \${PYTHON:-python}.
EOF
}

die() {  # die CODE MESSAGE
    echo "$PROG: error: $2" >&2
    exit "$1"
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# ----------------------------------------------------------------- arguments
SEEDS=1
OUT=out/ablate
TASK=
DRY_RUN=0
PRINT_SLURM=0
REPORT=1
PASS=()          # arguments for train.py
while (($#)); do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --seeds)   (($# >= 2)) || die 2 "--seeds needs a value"; SEEDS=$2; shift ;;
        --seeds=*) SEEDS=${1#--seeds=} ;;
        --out)     (($# >= 2)) || die 2 "--out needs a value"; OUT=$2; shift ;;
        --out=*)   OUT=${1#--out=} ;;
        --task)    (($# >= 2)) || die 2 "--task needs a value"; TASK=$2; shift ;;
        --task=*)  TASK=${1#--task=} ;;
        --dry-run) DRY_RUN=1 ;;
        --print-slurm) PRINT_SLURM=1 ;;
        --no-report) REPORT=0 ;;
        --) shift; PASS+=("$@"); break ;;
        --?*)
            key=${1#--}; key=${key%%=*}; key=${key//-/_}   # train.py reads --out-dir as out_dir
            case $key in
                out_dir|seed|resume)
                    die 2 "ablate.sh sets --$key itself; use --out DIR / --seeds N (got '$1')" ;;
                use_swiglu|use_rope|use_rmsnorm|use_warmup|use_cosine)
                    die 2 "ablate.sh sets the switches itself, per experiment (got '$1')" ;;
            esac
            PASS+=("$1") ;;
        *) PASS+=("$1") ;;
    esac
    shift
done

is_uint "$SEEDS" && ((10#$SEEDS >= 1)) || die 2 "--seeds must be a positive integer (got '$SEEDS')"
SEEDS=$((10#$SEEDS))
[[ -n $OUT ]] || die 2 "--out must not be empty"
OUT=${OUT%/}; [[ -n $OUT ]] || OUT=/
NTASKS=$((${#EXPERIMENTS[@]} * SEEDS))
if [[ -n $TASK ]]; then
    is_uint "$TASK" || die 2 "--task must be a non-negative integer (got '$TASK')"
    TASK=$((10#$TASK))
    ((TASK < NTASKS)) || die 2 "--task $TASK out of range: 7 experiments x $SEEDS seed(s) = tasks 0..$((NTASKS - 1))"
    ((PRINT_SLURM == 0)) || die 2 "--task and --print-slurm do not go together"
fi

# ------------------------------------------------------------------ helpers
# train.py / plot.py: relative names when run from the repo root (readable commands).
if [[ $PWD == "$SCRIPT_DIR" ]]; then HERE=; else HERE=$SCRIPT_DIR/; fi
TRAIN_PY=${HERE}train.py
PLOT_PY=${HERE}plot.py

# task index -> experiment / seed (the one mapping; slurm/ablate.sbatch relies on it)
task_exp()  { echo "${EXPERIMENTS[$(($1 / SEEDS))]}"; }
task_seed() { echo $(($1 % SEEDS + 1)); }

switches_for() {  # switches_for EXP -> "--use_x=True/False" x5
    local exp=$1 s on
    for s in "${SWITCHES[@]}"; do
        if [[ $exp == all || $s == "use_$exp" ]]; then on=True; else on=False; fi
        printf '%s\n' "--$s=$on"
    done
}

run_dir() { echo "$OUT/$1/seed$2"; }

quote_cmd() {  # shell-quoted one-line form of "$@"
    local out= a
    for a in "$@"; do out+=$(printf '%q' "$a")' '; done
    echo "${out% }"
}

# CMD=(...) for (exp, seed); STATE = new | resume | done
build_cmd() {
    local exp=$1 seed=$2 dir sw
    dir=$(run_dir "$exp" "$seed")
    mapfile -t sw < <(switches_for "$exp")
    CMD=("$PY" "$TRAIN_PY" "${PASS[@]}" "--out_dir=$dir" "--seed=$seed" "${sw[@]}")
    if [[ -f $dir/results.json ]]; then
        STATE=done
    elif [[ -f $dir/ckpt.pt ]]; then
        STATE=resume; CMD+=(--resume=True)
    else
        STATE=new
    fi
}

describe_rc() {
    case $1 in
        75) echo "stopped after saving a checkpoint (preempted); rerun the same command to resume" ;;
        2)  echo "user/config error" ;;
        3)  echo "NaN/inf loss" ;;
        *)  echo "crash" ;;
    esac
}

# Signals: train.py runs in the background and we `wait` for it, because bash only
# runs traps between commands (a foreground child would delay them until it exits).
# USR1 (SLURM's warning before the time limit) and TERM are forwarded to it as they are;
# INT is forwarded as TERM, because background children of a non-interactive bash start
# with SIGINT ignored (train.py may not have installed its handler yet). train.py then
# checkpoints and exits 75. After a signal no further run is started.
CHILD=
STOP=0
on_signal() {
    STOP=1
    if [[ -n $CHILD ]]; then kill "-$1" "$CHILD" 2>/dev/null || true; fi
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM
trap 'on_signal TERM' INT

run_child() {  # run "$@" in the background, forward signals, return its exit code
    local rc again
    "$@" &
    CHILD=$!
    while :; do
        if wait "$CHILD"; then rc=0; else rc=$?; fi
        if ((rc > 128)); then
            # wait returns 128+sig early when a trapped signal arrives: if the child still
            # runs (or is an unreaped zombie), wait again for its own exit status.
            if kill -0 "$CHILD" 2>/dev/null; then continue; fi
            # it exited just as the signal came: ask once more for its real status
            # (bash remembers it; 127 = unknown pid, then keep what we have)
            if wait "$CHILD" 2>/dev/null; then again=0; else again=$?; fi
            ((again == 127)) || rc=$again
        fi
        break
    done
    CHILD=
    return "$rc"
}

run_one() {  # run_one EXP SEED: skip / resume / run; exits on failure
    local exp=$1 seed=$2 rc dir what
    dir=$(run_dir "$exp" "$seed")
    build_cmd "$exp" "$seed"
    if [[ $STATE == done ]]; then
        echo "$PROG: skip $exp seed $seed: already finished ($dir/results.json exists)" >&2
        return 0
    fi
    if ((DRY_RUN)); then
        quote_cmd "${CMD[@]}"
        return 0
    fi
    if ((STOP)); then
        echo "$PROG: stop requested by a signal; not starting $exp seed $seed" >&2
        exit 75
    fi
    if [[ $STATE == resume ]]; then
        echo "$PROG: resume $exp seed $seed ($dir/ckpt.pt exists, no results.json)" >&2
    else
        echo "$PROG: run $exp seed $seed -> $dir" >&2
    fi
    echo "$PROG: \$ $(quote_cmd "${CMD[@]}")" >&2
    if run_child "${CMD[@]}"; then rc=0; else rc=$?; fi
    if ((rc != 0)); then
        if ((rc == 75)); then what=STOPPED; else what=FAILED; fi
        echo "$PROG: $what: $exp seed $seed exited with code $rc ($(describe_rc "$rc")); out_dir $dir" >&2
        exit "$rc"
    fi
    echo "$PROG: done $exp seed $seed" >&2
}

# ------------------------------------------------------------------ modes
if ((PRINT_SLURM)); then
    if [[ -n $HERE ]]; then
        echo "$PROG: warning: not run from the repo root; sbatch runs in its submit dir, so relative paths below must be valid from there" >&2
    fi
    quote_cmd sbatch "--array=0-$((NTASKS - 1))" "${HERE}slurm/ablate.sbatch" \
        --seeds "$SEEDS" --out "$OUT" "${PASS[@]}"
    for ((i = 0; i < NTASKS; i++)); do
        exp=$(task_exp "$i"); seed=$(task_seed "$i")
        build_cmd "$exp" "$seed"
        if [[ $STATE == done ]]; then
            echo "# task $i ($exp seed $seed): already finished, skipped"
        else
            echo "# task $i ($exp seed $seed): $(quote_cmd "${CMD[@]}")"
        fi
    done
    echo "# when all tasks are done, write the report: $(quote_cmd bash "${HERE}ablate.sh" --seeds "$SEEDS" --out "$OUT" "${PASS[@]}")"
    exit 0
fi

if ((DRY_RUN == 0)) && [[ ! -f $SCRIPT_DIR/train.py ]]; then
    die 2 "train.py not found next to ablate.sh ($SCRIPT_DIR)"
fi

if [[ -n $TASK ]]; then
    if [[ -n ${SLURM_ARRAY_TASK_MAX:-} && $SLURM_ARRAY_TASK_MAX != $((NTASKS - 1)) ]]; then
        echo "$PROG: warning: job array ends at task $SLURM_ARRAY_TASK_MAX but 7 experiments x $SEEDS seed(s) need --array=0-$((NTASKS - 1))" >&2
    fi
    exp=$(task_exp "$TASK"); seed=$(task_seed "$TASK")
    echo "$PROG: task $TASK -> $exp seed $seed" >&2
    run_one "$exp" "$seed"
    exit 0
fi

for exp in "${EXPERIMENTS[@]}"; do
    for ((seed = 1; seed <= SEEDS; seed++)); do
        run_one "$exp" "$seed"
    done
done
((DRY_RUN == 0)) || exit 0

# ------------------------------------------------------------------ report
if ((REPORT == 0)); then
    echo "$PROG: all $NTASKS runs finished; report skipped (--no-report)" >&2
    exit 0
fi
if [[ ! -f $SCRIPT_DIR/plot.py ]]; then
    echo "$PROG: warning: all $NTASKS runs finished, but plot.py is missing; no report written" >&2
    exit 0
fi
LOGS=()
for exp in "${EXPERIMENTS[@]}"; do
    for ((seed = 1; seed <= SEEDS; seed++)); do
        f=$(run_dir "$exp" "$seed")/log.txt
        if [[ -f $f ]]; then LOGS+=("$f"); else echo "$PROG: warning: missing $f" >&2; fi
    done
done
((${#LOGS[@]})) || die 1 "no log.txt found under $OUT; cannot write the report"
REPORT_CMD=("$PY" "$PLOT_PY" "${LOGS[@]}" --report "$OUT/report.pdf")
echo "$PROG: \$ $(quote_cmd "${REPORT_CMD[@]}")" >&2
if "${REPORT_CMD[@]}"; then rc=0; else rc=$?; fi
if ((rc != 0)); then
    echo "$PROG: all $NTASKS runs finished, but plot.py failed with exit code $rc; rerun: $(quote_cmd "${REPORT_CMD[@]}")" >&2
    exit "$rc"
fi
echo "$PROG: report written: $OUT/report.pdf" >&2
