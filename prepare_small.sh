#!/usr/bin/env bash
# prepare_small.sh - cut the first N lines of a big .jsonl (or .jsonl.zst) into a small .jsonl
set -euo pipefail

PROG=prepare_small.sh
DEFAULT_N=50000

usage() {
    cat <<EOF
usage: bash prepare_small.sh BIG.jsonl[.zst] [N_LINES] [OUT]

Writes the first N_LINES lines (default $DEFAULT_N) of BIG into OUT, uncompressed.
  OUT defaults to BIG's name without .zst and .jsonl plus .small<N>.jsonl, beside it:
      data/train.jsonl      -> data/train.small50000.jsonl
      data/train.jsonl.zst  -> data/train.small50000.jsonl
  If OUT is an existing directory, that default file name is used inside it.
A .zst input is decompressed with 'zstd -dc' or, without zstd, python's zstandard module.
Prints the number of lines and bytes written. Refuses to overwrite BIG itself (also through
a symlink or hard link). Writes a temporary file beside OUT and renames it at the end, so an
interrupted run never leaves a partial file under OUT's name. A last line without a newline
gets one. Exit codes: 0 ok, 1 read/decompress/write failure, 2 usage error or missing input.
EOF
}

die() {  # die CODE MESSAGE   (one line on stderr)
    echo "$PROG: error: $2" >&2
    exit "$1"
}

case ${1:-} in
    -h|--help) usage; exit 0 ;;
esac
(($# >= 1 && $# <= 3)) || { usage >&2; exit 2; }

IN=$1
N=${2:-$DEFAULT_N}
OUT=${3:-}

[[ -e $IN ]] || die 2 "input file not found: $IN"
[[ -f $IN ]] || die 2 "input is not a regular file: $IN"
[[ -r $IN ]] || die 2 "input file not readable: $IN"
[[ $N =~ ^[0-9]+$ ]] || die 2 "N_LINES must be a positive integer (got '$N')"
N=$((10#$N))
((N >= 1)) || die 2 "N_LINES must be a positive integer (got '$2')"

base=$(basename -- "$IN")
base=${base%.zst}
base=${base%.jsonl}
default_name=$base.small$N.jsonl
if [[ -z $OUT ]]; then
    OUT=$(dirname -- "$IN")/$default_name
elif [[ -d $OUT ]]; then
    OUT=${OUT%/}/$default_name
fi
# same file (same device and inode: catches symlinks and hard links)?
if [[ $OUT -ef $IN ]]; then
    die 2 "refusing to overwrite the input file: $OUT is $IN"
fi
out_dir=$(dirname -- "$OUT")
[[ -d $out_dir ]] || die 2 "output directory does not exist: $out_dir"

decompress() {  # decompress FILE -> stdout
    if command -v zstd >/dev/null 2>&1; then
        zstd -dc -- "$1"
    else
        "${PYTHON:-python}" -c '
import sys, zstandard
with open(sys.argv[1], "rb") as f:
    zstandard.ZstdDecompressor().copy_stream(f, sys.stdout.buffer)
' "$1"
    fi
}

if [[ $IN == *.zst ]]; then
    if ! command -v zstd >/dev/null 2>&1 &&
        ! "${PYTHON:-python}" -c 'import zstandard' >/dev/null 2>&1; then
        die 2 "cannot decompress $IN: install zstd (the command) or the python package zstandard"
    fi
fi

# The traps come first and the shell itself creates the files (noclobber: never an existing one), so a
# signal at any moment leaves no temporary file behind (mktemp in $(...) left one if it came in between).
TMP="$out_dir/.$(basename -- "$OUT").tmp.$$.$RANDOM"
ERR="${TMPDIR:-/tmp}/prepare_small.$$.$RANDOM.err"
cleanup() { rm -f -- "$TMP" "$ERR"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
set -C
{ : >"$TMP"; } 2>/dev/null || { TMP=; die 1 "cannot create a temporary file in $out_dir"; }
{ : >"$ERR"; } 2>/dev/null || { ERR=; die 1 "cannot create a temporary file in ${TMPDIR:-/tmp}"; }
set +C

if [[ $IN == *.zst ]]; then
    # head closes the pipe after N lines, so the decompressor may die of SIGPIPE:
    # its failure only matters if we got fewer than N lines.
    set +o pipefail
    { decompress "$IN" 2>"$ERR"; } | head -n "$N" >"$TMP"
    st=("${PIPESTATUS[@]}")
    set -o pipefail
    ((st[1] == 0)) || die 1 "writing $TMP failed"
    dec_rc=${st[0]}
else
    head -n "$N" -- "$IN" >"$TMP" || die 1 "reading $IN / writing $TMP failed"
    dec_rc=0
fi

# make sure the last line ends with a newline
if [[ -s $TMP ]] && (($(tail -c 1 -- "$TMP" | wc -l) == 0)); then
    printf '\n' >>"$TMP"
fi
lines=$(wc -l <"$TMP")
lines=$((lines + 0))
if ((dec_rc != 0 && lines < N)); then
    die 1 "decompressing $IN failed (exit $dec_rc): $(head -n 1 "$ERR")"
fi
bytes=$(wc -c <"$TMP")
bytes=$((bytes + 0))
chmod "$(printf '%04o' $((0666 & ~0$(umask))))" -- "$TMP" 2>/dev/null || true  # mktemp made it 0600
mv -f -- "$TMP" "$OUT"
if ((lines < N)); then
    echo "$PROG: warning: $IN has only $lines lines (asked for $N)" >&2
fi
echo "$PROG: wrote $lines lines, $bytes bytes to $OUT"
