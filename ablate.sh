#!/usr/bin/env bash
# ablate.sh - run a gpt-ablate ablation: every experiment of a design x N seeds, then the report.
#
# Run `bash ablate.sh -h` for usage. The experiments come from plot.py (--print-design), which
# reads the switches from train.py's config, so a new switch needs no edit here. This file is the
# ONE place that maps "task index -> (experiment, seed)"; slurm/ablate.sbatch calls
# `bash ablate.sh --task $SLURM_ARRAY_TASK_ID ...`.
#
# Written for bash >= 4.2 (old cluster nodes): possibly empty arrays are expanded as ${a[@]+"${a[@]}"}.
set -euo pipefail

PROG=ablate.sh
PY=${PYTHON:-python}            # interpreter (tests point PYTHON at a fake)
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
    cat <<EOF
usage: bash ablate.sh [--design D] [--switches a,b] [--switch KEY=VALUE ...] [--seeds N] [--out DIR]
                      [--budget DURATION] [options] [config/X.py] [--key=value ...]

Runs every experiment of an ablation design, N seeds each (seeds 1..N), into
DIR/<experiment>/seed<k>/, then writes the report DIR/report.pdf (.md, .png) with plot.py.
The experiments and their switches come from \`python plot.py --print-design\` (which reads the
switches declared in train.py's config; \`bash ablate.sh --list-switches\` lists them):

  --design D          one-at-a-time (default: baseline, each switch alone, all),
                      leave-one-out (all, and all minus each one: no_<switch>), or
                      factorial (every combination of the chosen switches)
  --switches a,b,c    which switches take part (default: the default set of train.py)
  --switch KEY=VALUE  a value switch: an experiment that sets --KEY=VALUE (e.g. n_layer=2,
                      learning_rate=3e-3; no spaces in VALUE); off = your setting or the default.
                      Repeatable.

Every other argument goes to train.py unchanged (same data, validation set, token budget and
settings for every run). After them ablate.sh appends --out_dir=... --seed=k and every switch
explicitly (--use_x=True/False, plus --KEY=VALUE for a value switch that is on), so a config file
cannot leak a switch into the baseline. The design is saved in DIR/design.json; a different
design in the same DIR is refused (use a new --out).

  --seeds N           seeds per experiment (default 1)
  --out DIR           output root (default out/ablate)
  --budget DURATION   equal budgets: turn a per-run wall-clock budget (4h, 30m, 1h30m, 90s) into
                      ONE step count for every run: each arm's speed is probed on this machine
                      (train.py --steps-in=DURATION), the slowest arm sets max_iters, and every
                      run gets --max_iters=N (and no max_time), so all arms see the same tokens and
                      the schedule's horizon is known from step 0. Saved in DIR/budget.json and reused
                      by reruns, resumes and array tasks (the first task calibrates, the others
                      wait up to \$ABLATE_BUDGET_WAIT s, default 3600). Not with --max_iters/--max_time.
  --task I            run only task I = exp_index*N + (seed-1), 0 <= I < experiments*N, in the
                      design's order (used by slurm/ablate.sbatch); no report
  --dry-run           print the train.py commands that would run; run nothing
  --print-slurm       print the sbatch command line for the job array, then each task's train.py
                      command (as '# task I ...' comment lines); run nothing
  --no-report         do not run plot.py at the end
  --list-switches     print train.py's switches (name, key, shape|schedule, default|optional, help)
  -h, --help          this text
  --                  everything after it goes to train.py

Studies: --tune KEY=v1,v2,.. (each arm at its own best value, chosen on a tuning set), --scale KEY=v1,..
(several sizes), --tokens / --tokens-per-param (budgets per size), --jobs N (N runs at once),
--tune-max-extend N (tune past an edge choice), --warmup-frac F (warmup per size),
--experiments, --submit, --stage: these hand the whole command to ablate.py (python ablate.py -h).

A finished run (results.json present) is skipped; an interrupted one (ckpt.pt present, no
results.json) is resumed with --resume=auto. If a run exits non-zero, ablate.sh says which and
exits with the same code (75 = preempted/stopped after checkpoint: requeue and rerun to resume;
2 = config error; 3 = NaN/inf loss; 1 = crash). SIGUSR1/SIGTERM received by ablate.sh are
forwarded to the running train.py (SIGINT as SIGTERM); no further run starts after one.
With --max_time (and no --budget) each arm turns its own speed into a step count, so the arms
train on different numbers of tokens: ablate.sh warns. The interpreter is \${PYTHON:-python}.
EOF
}

die() {  # die CODE MESSAGE
    echo "$PROG: error: $2" >&2
    exit "$1"
}
warn() { echo "$PROG: warning: $1" >&2; }

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# ----------------------------------------------------------------- studies: ablate.py
# Tuning per arm, several sizes, token budgets per size, N runs at once and dependent job arrays are
# ablate.py's (Python: stages, sizes and resume read and test better there); it takes every option below too.
for a in "$@"; do
    case $a in
        --) break ;;
        --tune|--tune=*|--tune-seeds|--tune-seeds=*|--tune-max-extend|--tune-max-extend=*|--warmup-frac|\
        --warmup-frac=*|--scale|--scale=*|--tokens|--tokens=*|--tokens-per-param|\
        --tokens-per-param=*|--jobs|--jobs=*|--stage|--stage=*|--submit|--experiments|--experiments=*)
            exec "$PY" "$SCRIPT_DIR/ablate.py" "$@" ;;
    esac
done

# ----------------------------------------------------------------- arguments
SEEDS=1
OUT=out/ablate
TASK=
DRY_RUN=0
PRINT_SLURM=0
REPORT=1
LIST_SWITCHES=0
BUDGET=
DESIGN_OPTS=()   # --design/--switches/--switch, for plot.py --print-design (and the sbatch line)
PASS=()          # arguments for train.py
need_value() { (($1 >= 2)) || die 2 "$2 needs a value"; }
while (($#)); do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --seeds)   need_value $# "$1"; SEEDS=$2; shift ;;
        --seeds=*) SEEDS=${1#--seeds=} ;;
        --out)     need_value $# "$1"; OUT=$2; shift ;;
        --out=*)   OUT=${1#--out=} ;;
        --task)    need_value $# "$1"; TASK=$2; shift ;;
        --task=*)  TASK=${1#--task=} ;;
        --design|--switches|--switch)
                   need_value $# "$1"; DESIGN_OPTS+=("$1" "$2"); shift ;;
        --design=*|--switches=*|--switch=*)
                   DESIGN_OPTS+=("${1%%=*}" "${1#*=}") ;;
        --budget)  need_value $# "$1"; BUDGET=$2; shift ;;
        --budget=*) BUDGET=${1#--budget=} ;;
        --dry-run) DRY_RUN=1 ;;
        --print-slurm) PRINT_SLURM=1 ;;
        --no-report) REPORT=0 ;;
        --list-switches) LIST_SWITCHES=1 ;;
        --) shift; PASS+=("$@"); break ;;
        *) PASS+=("$1") ;;
    esac
    shift
done

# train.py / plot.py: relative names when run from the repo root (readable commands).
if [[ $PWD == "$SCRIPT_DIR" ]]; then HERE=; else HERE=$SCRIPT_DIR/; fi
TRAIN_PY=${HERE}train.py
PLOT_PY=${HERE}plot.py

if ((LIST_SWITCHES)); then
    exec "$PY" "$TRAIN_PY" --list-switches
fi

pass_key() {  # the config key of a train.py argument (--out-dir=x -> out_dir), else empty
    local a=$1 key
    [[ $a == --?* ]] || return 0
    key=${a#--}; key=${key%%=*}
    echo "${key//-/_}"
}

USER_MAX_TIME=
for a in ${PASS[@]+"${PASS[@]}"}; do
    case $(pass_key "$a") in
        out_dir|seed|resume)
            die 2 "ablate.sh sets --$(pass_key "$a") itself; use --out DIR / --seeds N (got '$a')" ;;
        max_iters)
            [[ -z $BUDGET ]] || die 2 "--budget sets max_iters for every run; do not also give '$a'" ;;
        max_time)
            [[ -z $BUDGET ]] || die 2 "--budget replaces max_time (one step count for all arms); do not also give '$a'"
            USER_MAX_TIME=${a#*=}; [[ $a == *=* ]] || USER_MAX_TIME= ;;
    esac
done

is_uint "$SEEDS" && ((10#$SEEDS >= 1)) || die 2 "--seeds must be a positive integer (got '$SEEDS')"
SEEDS=$((10#$SEEDS))
[[ -n $OUT ]] || die 2 "--out must not be empty"
OUT=${OUT%/}; [[ -n $OUT ]] || OUT=/
if [[ -n $TASK ]]; then
    is_uint "$TASK" || die 2 "--task must be a non-negative integer (got '$TASK')"
    TASK=$((10#$TASK))
    ((PRINT_SLURM == 0)) || die 2 "--task and --print-slurm do not go together"
fi
if [[ -n $BUDGET ]]; then
    [[ $BUDGET =~ ^([0-9]+(\.[0-9]*)?[hmsHMS]?)+$ && $BUDGET =~ [1-9] ]] ||
        die 2 "--budget expects a duration such as 4h, 30m, 1h30m or 90s (got '$BUDGET')"
fi
[[ -f $SCRIPT_DIR/plot.py ]] || die 2 "plot.py not found next to ablate.sh ($SCRIPT_DIR): it defines the experiments"

TMPD=$(mktemp -d "${TMPDIR:-/tmp}/ablate.XXXXXX")
HOLD_LOCK=
cleanup() {
    rm -rf "$TMPD"
    if [[ -n $HOLD_LOCK ]]; then rm -rf "$HOLD_LOCK"; fi
}
trap cleanup EXIT

quote_cmd() {  # shell-quoted one-line form of "$@" (plain words stay as they are)
    local out= a
    for a in "$@"; do
        if [[ $a =~ ^[A-Za-z0-9_./:=+,@%-]+$ ]]; then out+="$a "; else out+=$(printf '%q' "$a")' '; fi
    done
    echo "${out% }"
}

# ------------------------------------------------------------------ the design
# plot.py --print-design --format json: {"design", "reference", "switches", "experiments": [{"name",
# "on", "args"}]}, experiments in task order; read here as "name<TAB>arg1 arg2 ..." lines after a
# "#design<TAB>kind" line (the tsv form, made from the json so plot.py, which imports torch, starts once).
design_tsv() {  # design_tsv JSON_FILE TSV_FILE
    "$PY" -c 'import json, sys
d = json.load(open(sys.argv[1]))
print("#design\t" + d["design"])
for e in d["experiments"]:
    print(e["name"] + "\t" + " ".join(e["args"]))' "$1" >"$2" 2>"$TMPD/tsv.err"
}

print_design() {  # -> $TMPD/design.json and $TMPD/design.tsv; a failure ends ablate.sh with plot.py's message
    local rc msg
    if "$PY" "$PLOT_PY" --print-design ${DESIGN_OPTS[@]+"${DESIGN_OPTS[@]}"} --format json \
        >"$TMPD/design.json" 2>"$TMPD/design.err"; then rc=0; else rc=$?; fi
    if ((rc != 0)); then
        msg=$(grep -v '^[[:space:]]*$' "$TMPD/design.err" | tail -n 1 || true)
        msg=${msg#plot.py: }; msg=${msg#error: }
        die "$rc" "design: ${msg:-plot.py --print-design failed with exit code $rc}"
    fi
    design_tsv "$TMPD/design.json" "$TMPD/design.tsv" ||
        die 1 "cannot read the design that plot.py --print-design printed: $(tail -n 1 "$TMPD/tsv.err")"
}

EXP_NAMES=()
EXP_ARGS=()      # one string per experiment: its switch arguments, space separated
SWITCH_KEYS=()   # use_* keys ablate.sh sets on every run
print_design
while IFS=$'\t' read -r name args || [[ -n $name ]]; do
    [[ -n $name && $name != \#* ]] || continue
    [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9_.,+=-]*$ ]] ||
        die 1 "plot.py --print-design gave an experiment name that is not a folder name: '$name'"
    for n in ${EXP_NAMES[@]+"${EXP_NAMES[@]}"}; do
        [[ $n != "$name" ]] || die 1 "plot.py --print-design gave experiment '$name' twice"
    done
    EXP_NAMES+=("$name"); EXP_ARGS+=("$args")
done <"$TMPD/design.tsv"
NEXP=${#EXP_NAMES[@]}
((NEXP > 0)) || die 1 "plot.py --print-design gave no experiments"
read -ra first <<<"${EXP_ARGS[0]}"
for a in ${first[@]+"${first[@]}"}; do
    [[ $a =~ ^--(use_[A-Za-z0-9_]+)=(True|False)$ ]] && SWITCH_KEYS+=("${BASH_REMATCH[1]}")
done
for a in ${PASS[@]+"${PASS[@]}"}; do
    key=$(pass_key "$a")
    for s in ${SWITCH_KEYS[@]+"${SWITCH_KEYS[@]}"}; do
        [[ $key != "$s" ]] ||
            die 2 "ablate.sh sets the switches itself, per experiment (got '$a'); choose them with --design/--switches/--switch"
    done
done

NTASKS=$((NEXP * SEEDS))
DESIGN_DESC="$NEXP experiments x $SEEDS seed(s)"
if [[ -n $TASK ]]; then
    ((TASK < NTASKS)) || die 2 "--task $TASK out of range: $DESIGN_DESC = tasks 0..$((NTASKS - 1))"
fi

json_field() {  # json_field NAME TEXT -> the first "NAME": "string" or number in TEXT (our json files)
    local re="\"$1\"[[:space:]]*:[[:space:]]*(\"[^\"]*\"|[0-9]+)"
    if [[ $2 =~ $re ]]; then
        local v=${BASH_REMATCH[1]}
        echo "${v//\"/}"
    fi
}

design_summary() {  # "leave-one-out: all, no_a, no_b" from a design json
    local text=$1 names= re='"name"[[:space:]]*:[[:space:]]*"([^"]*)"'
    text=${text#*\"experiments\"}
    while [[ $text =~ $re ]]; do
        names+="${names:+, }${BASH_REMATCH[1]}"
        text=${text#*"${BASH_REMATCH[0]}"}
    done
    echo "$(json_field design "$1"): $names"
}

# DIR/design.json: the design of this ablation, written once, so the report and every array
# task agree; a different design in the same DIR would mix results and is refused. (Compared as
# design kind + experiments + their arguments, so a cosmetic change in plot.py's json is no change.)
DESIGN_JSON=$OUT/design.json
want=$(<"$TMPD/design.json")
if [[ -f $DESIGN_JSON ]]; then
    have=$(<"$DESIGN_JSON")
    design_tsv "$DESIGN_JSON" "$TMPD/have.tsv" ||
        die 2 "cannot read $DESIGN_JSON ($(tail -n 1 "$TMPD/tsv.err")); delete it only if no runs of another design are in $OUT"
    if [[ $(<"$TMPD/have.tsv") != "$(<"$TMPD/design.tsv")" ]]; then
        die 2 "$DESIGN_JSON holds another design ($(design_summary "$have")) than the one requested ($(design_summary "$want")); one folder for both would mix results: pass the same --design/--switches/--switch as before, or a new --out"
    fi
elif ((DRY_RUN == 0 && PRINT_SLURM == 0)); then
    mkdir -p "$OUT" || die 2 "cannot create $OUT"
    printf '%s\n' "$want" >"$DESIGN_JSON.tmp.$$" && mv -f "$DESIGN_JSON.tmp.$$" "$DESIGN_JSON" ||
        die 2 "cannot write $DESIGN_JSON"
fi

# ------------------------------------------------------------------ helpers
# task index -> experiment / seed (the one mapping; slurm/ablate.sbatch relies on it)
task_exp()  { echo $(($1 / SEEDS)); }
task_seed() { echo $(($1 % SEEDS + 1)); }

run_dir() { echo "$OUT/$1/seed$2"; }

BUDGET_ARGS=()   # --max_iters=N --max_time= in budget mode

# CMD=(...) for (experiment index, seed); STATE = new | resume | done
build_cmd() {
    local i=$1 seed=$2 dir sw
    dir=$(run_dir "${EXP_NAMES[$i]}" "$seed")
    read -ra sw <<<"${EXP_ARGS[$i]}"
    CMD=("$PY" "$TRAIN_PY" ${PASS[@]+"${PASS[@]}"} "--out_dir=$dir" "--seed=$seed"
         ${sw[@]+"${sw[@]}"} ${BUDGET_ARGS[@]+"${BUDGET_ARGS[@]}"})
    if [[ -f $dir/results.json ]]; then
        STATE=done
    elif [[ -f $dir/ckpt.pt ]]; then
        STATE=resume; CMD+=(--resume=auto)   # train.py refuses a checkpoint of another run
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

# ------------------------------------------------------------------ equal budgets
# --budget D: one step count for every arm. Each arm is probed with train.py --steps-in=D
# (steps of training + evaluation that fit in D on this machine); the slowest arm sets N and
# every run gets --max_iters=N. Arms that differ only in schedule switches (the learning-rate
# schedule; train.py --list-switches says which) run the same model at the same speed: one probe.
BUDGET_JSON=$OUT/budget.json
LOCK=$OUT/.budget.lock
HOST=${HOSTNAME:-$(uname -n)}

json_str() {  # a JSON string literal
    local s=$1
    s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\t'/\\t}; s=${s//$'\n'/\\n}; s=${s//$'\r'/\\r}
    printf '"%s"' "$s"
}

pass_json() {
    local out= a
    for a in ${PASS[@]+"${PASS[@]}"}; do out+="${out:+, }$(json_str "$a")"; done
    echo "[$out]"
}

read_budget_json() {  # sets MAX_ITERS from $BUDGET_JSON; refuses another budget
    local text b n
    text=$(<"$BUDGET_JSON")
    b=$(json_field budget "$text"); n=$(json_field max_iters "$text")
    is_uint "$n" && ((n > 0)) || die 2 "$BUDGET_JSON has no usable max_iters; delete it to calibrate again"
    if [[ $b != "$BUDGET" ]]; then
        die 2 "$BUDGET_JSON was calibrated for --budget $b (max_iters=$n), not --budget $BUDGET; runs with different budgets in one folder would mix results: pass --budget $b, or a new --out"
    fi
    [[ ${text//[[:space:]]/} == *"\"train_args\":$(pass_json | tr -d '[:space:]')"* ]] ||
        warn "$BUDGET_JSON was calibrated with other train.py arguments; delete it to calibrate again if they change the speed"
    MAX_ITERS=$n
}

calibrate_budget() {  # probe every arm (under the lock), write $BUDGET_JSON
    local schedule=() line name key kind i a sw sig n rc per= min=
    local -A probed=() probed_by=()
    # schedule switches: the third column of train.py --list-switches
    if "$PY" "$TRAIN_PY" --list-switches >"$TMPD/switches" 2>"$TMPD/switches.err"; then
        while IFS=$'\t' read -r name key kind _; do
            [[ $kind != schedule ]] || schedule+=("$key")
        done <"$TMPD/switches"
    else
        warn "train.py --list-switches failed; probing every arm"
    fi
    echo "$PROG: --budget $BUDGET: probing the speed of each arm on $HOST (train.py --steps-in=$BUDGET)" >&2
    for ((i = 0; i < NEXP; i++)); do
        name=${EXP_NAMES[$i]}
        read -ra sw <<<"${EXP_ARGS[$i]}"
        sig=arm:
        for a in ${sw[@]+"${sw[@]}"}; do
            key=${a#--}; key=${key%%=*}
            for s in ${schedule[@]+"${schedule[@]}"}; do [[ $key != "$s" ]] || continue 2; done
            sig+="$a "
        done
        if [[ -n ${probed[$sig]+x} ]]; then
            n=${probed[$sig]}
            echo "$PROG: budget: $name runs the same model as ${probed_by[$sig]} (only schedule switches differ): $n steps" >&2
        else
            ((STOP == 0)) || { echo "$PROG: stop requested by a signal; budget not calibrated" >&2; exit 75; }
            local cmd=("$PY" "$TRAIN_PY" ${PASS[@]+"${PASS[@]}"} --seed=1 ${sw[@]+"${sw[@]}"} "--steps-in=$BUDGET")
            echo "$PROG: \$ $(quote_cmd "${cmd[@]}")" >&2
            if run_child "${cmd[@]}" >"$TMPD/probe.out"; then rc=0; else rc=$?; fi
            ((rc == 0)) || die "$rc" "budget probe of arm $name failed with exit code $rc ($(describe_rc "$rc"))"
            n=$(grep -v '^[[:space:]]*$' "$TMPD/probe.out" | tail -n 1 | tr -d '[:space:]' || true)
            is_uint "$n" || die 1 "budget probe of arm $name printed '$n', not a step count"
            n=$((10#$n))
            ((n > 0)) || die 2 "--budget $BUDGET is too short: arm $name fits 0 steps"
            probed[$sig]=$n; probed_by[$sig]=$name
            echo "$PROG: budget: $name fits $n steps in $BUDGET" >&2
        fi
        per+="${per:+, }$(json_str "$name"): $n"
        if [[ -z $min ]] || ((n < min)); then min=$n; fi
    done
    {
        echo "{"
        echo "  \"budget\": $(json_str "$BUDGET"),"
        echo "  \"max_iters\": $min,"
        echo "  \"per_arm\": {$per},"
        echo "  \"host\": $(json_str "$HOST"),"
        echo "  \"created\": $(json_str "$(date -u +%Y-%m-%dT%H:%M:%SZ)"),"
        echo "  \"train_args\": $(pass_json)"
        echo "}"
    } >"$BUDGET_JSON.tmp.$$" && mv -f "$BUDGET_JSON.tmp.$$" "$BUDGET_JSON" || die 2 "cannot write $BUDGET_JSON"
    echo "$PROG: budget: --budget $BUDGET = max_iters $min for every arm (the slowest arm's count); saved in $BUDGET_JSON" >&2
}

any_run_exists() {
    local i seed d
    for ((i = 0; i < NEXP; i++)); do
        for ((seed = 1; seed <= SEEDS; seed++)); do
            d=$(run_dir "${EXP_NAMES[$i]}" "$seed")
            [[ ! -f $d/results.json && ! -f $d/ckpt.pt ]] || return 0
        done
    done
    return 1
}

setup_budget() {  # sets MAX_ITERS: from $BUDGET_JSON, or calibrates (one process: the lock holder)
    local start=$SECONDS limit=${ABLATE_BUDGET_WAIT:-3600} poll=${ABLATE_BUDGET_POLL:-5} owner host pid said=
    while [[ ! -f $BUDGET_JSON ]]; do
        if any_run_exists; then
            die 2 "$OUT already holds runs made without --budget (no $BUDGET_JSON); their step counts differ: use a new --out"
        fi
        mkdir -p "$OUT" || die 2 "cannot create $OUT"
        if mkdir "$LOCK" 2>/dev/null; then
            HOLD_LOCK=$LOCK
            echo "$HOST $$ $(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$LOCK/owner"
            [[ -f $BUDGET_JSON ]] || calibrate_budget
            rm -rf "$LOCK"; HOLD_LOCK=
            break
        fi
        owner=$(cat "$LOCK/owner" 2>/dev/null || true)
        read -r host pid _ <<<"$owner" || true
        if [[ $host == "$HOST" && -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            warn "removing the stale $LOCK of process $pid, which no longer runs"
            rm -rf "$LOCK"
            continue
        fi
        if [[ -z $said ]]; then
            said=1
            echo "$PROG: waiting for $BUDGET_JSON: another task is calibrating --budget $BUDGET (${owner:-lock $LOCK})" >&2
        fi
        ((STOP == 0)) || { echo "$PROG: stop requested by a signal while waiting for $BUDGET_JSON" >&2; exit 75; }
        if ((SECONDS - start >= limit)); then
            die 1 "waited ${limit}s for $BUDGET_JSON, being calibrated by ${owner:-?}; if that task died, remove $LOCK and rerun (ABLATE_BUDGET_WAIT sets the wait)"
        fi
        sleep "$poll"
    done
    read_budget_json
}

if [[ -n $BUDGET ]]; then
    if [[ -f $BUDGET_JSON ]]; then
        read_budget_json
    elif ((DRY_RUN || PRINT_SLURM)); then
        MAX_ITERS=CALIBRATED
        echo "$PROG: --budget $BUDGET: max_iters is calibrated when the ablation starts (no $BUDGET_JSON yet); shown as --max_iters=$MAX_ITERS" >&2
    else
        setup_budget
    fi
    BUDGET_ARGS=("--max_iters=$MAX_ITERS" "--max_time=")
elif [[ -f $BUDGET_JSON ]]; then
    die 2 "$OUT holds a --budget ablation ($BUDGET_JSON: --budget $(json_field budget "$(<"$BUDGET_JSON")")): pass the same --budget, or a new --out"
elif [[ -n $USER_MAX_TIME && $USER_MAX_TIME != 0 && ${USER_MAX_TIME,,} != none ]]; then
    warn "with --max_time=$USER_MAX_TIME each arm turns its own speed into a step count, so the arms train on different numbers of tokens; use --budget $USER_MAX_TIME for one step count shared by every arm"
fi

# ------------------------------------------------------------------ runs
T0=$SECONDS
RAN=0   # runs finished by this command: the rate behind the time left

fmt_secs() { if (($1 >= 3600)); then printf '%dh%02dm' $(($1 / 3600)) $(($1 % 3600 / 60)); else printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); fi; }

progress() {  # progress WHAT: "[k/N runs done] WHAT; elapsed ..., about ... left" (k: results.json on disk)
    local done=0 i seed el n msg
    for ((i = 0; i < NEXP; i++)); do
        for ((seed = 1; seed <= SEEDS; seed++)); do
            [[ ! -f $(run_dir "${EXP_NAMES[$i]}" "$seed")/results.json ]] || done=$((done + 1))
        done
    done
    if [[ -n $TASK ]]; then  # an array task: since the ablation began (design.json), at the rate of all tasks
        el=$(($(date +%s) - $(stat -c %Y "$DESIGN_JSON" 2>/dev/null || date +%s))); n=$done
    else
        el=$((SECONDS - T0)); n=$RAN
    fi
    msg="[$done/$NTASKS runs done] $1; elapsed $(fmt_secs "$el")"
    if ((n > 0 && done < NTASKS)); then msg+=", about $(fmt_secs $((el * (NTASKS - done) / n))) left"; fi
    echo "$PROG: $msg" >&2
}

run_one() {  # run_one EXP_INDEX SEED: skip / resume / run; exits on failure
    local i=$1 seed=$2 exp rc dir what
    exp=${EXP_NAMES[$i]}
    dir=$(run_dir "$exp" "$seed")
    build_cmd "$i" "$seed"
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
    RAN=$((RAN + 1))
    progress "done $exp seed $seed"
}

# the ablate.sh arguments that define this ablation (for the sbatch line and the report rerun)
ABLATE_ARGS=(--seeds "$SEEDS" --out "$OUT" ${DESIGN_OPTS[@]+"${DESIGN_OPTS[@]}"})
[[ -z $BUDGET ]] || ABLATE_ARGS+=(--budget "$BUDGET")
ABLATE_ARGS+=(${PASS[@]+"${PASS[@]}"})

if ((PRINT_SLURM)); then
    if [[ -n $HERE ]]; then
        warn "not run from the repo root; sbatch runs in its submit dir, so relative paths below must be valid from there"
    fi
    quote_cmd sbatch "--array=0-$((NTASKS - 1))" "${HERE}slurm/ablate.sbatch" "${ABLATE_ARGS[@]}"
    echo "# $DESIGN_DESC = $NTASKS tasks; task I = experiment I / $SEEDS, seed I % $SEEDS + 1"
    if [[ -n $BUDGET && $MAX_ITERS == CALIBRATED ]]; then
        echo "# --budget $BUDGET: the first task to start probes the arms and writes $BUDGET_JSON (max_iters for all); the others wait for it"
    fi
    for ((t = 0; t < NTASKS; t++)); do
        i=$(task_exp "$t"); seed=$(task_seed "$t")
        build_cmd "$i" "$seed"
        if [[ $STATE == done ]]; then
            echo "# task $t (${EXP_NAMES[$i]} seed $seed): already finished, skipped"
        else
            echo "# task $t (${EXP_NAMES[$i]} seed $seed): $(quote_cmd "${CMD[@]}")"
        fi
    done
    echo "# when all tasks are done, write the report: $(quote_cmd bash "${HERE}ablate.sh" "${ABLATE_ARGS[@]}")"
    exit 0
fi

if ((DRY_RUN == 0)) && [[ ! -f $SCRIPT_DIR/train.py ]]; then
    die 2 "train.py not found next to ablate.sh ($SCRIPT_DIR)"
fi

if [[ -n $TASK ]]; then
    if [[ -n ${SLURM_ARRAY_TASK_MAX:-} && $SLURM_ARRAY_TASK_MAX != $((NTASKS - 1)) ]]; then
        warn "job array ends at task $SLURM_ARRAY_TASK_MAX but $DESIGN_DESC need --array=0-$((NTASKS - 1)) (bash ablate.sh --print-slurm ... prints it)"
    fi
    i=$(task_exp "$TASK"); seed=$(task_seed "$TASK")
    echo "$PROG: task $TASK -> ${EXP_NAMES[$i]} seed $seed" >&2
    run_one "$i" "$seed"
    exit 0
fi

for ((i = 0; i < NEXP; i++)); do
    for ((seed = 1; seed <= SEEDS; seed++)); do
        run_one "$i" "$seed"
    done
done
((DRY_RUN == 0)) || exit 0

# ------------------------------------------------------------------ report
if ((REPORT == 0)); then
    echo "$PROG: all $NTASKS runs finished; report skipped (--no-report)" >&2
    exit 0
fi
LOGS=()
for ((i = 0; i < NEXP; i++)); do
    for ((seed = 1; seed <= SEEDS; seed++)); do
        f=$(run_dir "${EXP_NAMES[$i]}" "$seed")/log.txt
        if [[ -f $f ]]; then LOGS+=("$f"); else warn "missing $f"; fi
    done
done
((${#LOGS[@]})) || die 1 "no log.txt found under $OUT; cannot write the report"
REPORT_CMD=("$PY" "$PLOT_PY" ${LOGS[@]+"${LOGS[@]}"} --report "$OUT/report.pdf")
echo "$PROG: \$ $(quote_cmd "${REPORT_CMD[@]}")" >&2
if "${REPORT_CMD[@]}"; then rc=0; else rc=$?; fi
if ((rc != 0)); then
    echo "$PROG: all $NTASKS runs finished, but plot.py failed with exit code $rc; rerun: $(quote_cmd "${REPORT_CMD[@]}")" >&2
    exit "$rc"
fi
echo "$PROG: report written: $OUT/report.pdf" >&2
