#!/usr/bin/env bash
# Predict species with a trained run and write a BirdCLEF run file; prints where it went.
#
#   ./predict.sh                     the latest run under runs/, on the demo test folder
#   ./predict.sh FOLDER              a BirdCLEF test folder (wav/ + xml/) or any audio folder
#   ./predict.sh FILE.wav ...        audio files (MediaId = file name without extension)
#   ./predict.sh FOLDER --run runs/demo --top-k 10 --soundscape ...
#
# The inputs come before the options.
# Defaults: --run is the newest run folder under runs/ whose training ended; --out is
# RUN/predictions/<input name>.csv, with a CSV for people (top-5 species) beside it (a run
# file there already is replaced, with a note: give --out to keep it). Audio that is not a
# 16 kHz 16-bit mono wav is resampled into a cache beside the run file, .resampled/ (kept,
# so a rerun reuses it; --work-dir DIR puts it elsewhere).
# Every other option goes to predict/predict.py (see python predict/predict.py --help).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$ROOT/env.sh"

case "${1:-}" in
-h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
esac

# Inputs come first; from the first option on, everything goes to predict.py as written
# (its flags with and without values alike), --run and --out read here too for the defaults.
inputs=() run_dir="" out="" passed=()
while (($#)) && [[ "$1" != -* ]]; do
    inputs+=("$1")
    shift
done
while (($#)); do
    case "$1" in
    --run | --out)
        (($# >= 2)) || { echo "error: $1 needs a value" >&2; exit 2; }
        [[ "$1" == --run ]] && run_dir="$2" || out="$2"
        shift 2 ;;
    --run=*) run_dir="${1#--run=}"; shift ;;
    --out=*) out="${1#--out=}"; shift ;;
    *) passed+=("$1"); shift ;;
    esac
done

if [[ -z "$run_dir" ]]; then
    # the newest run folder whose training ended and chose its model and pooling (one still
    # training, or killed, has models of its first epochs, not the one it will choose)
    # (a glob, not ls: a folder name may hold a line break)
    for dir in "$ROOT"/runs/*/; do
        dir="${dir%/}"
        [[ -L "$dir" ]] && continue # a link planted in runs/ would choose where outputs go
        [[ -f "$dir/training_done.json" && -f "$dir/inference.json" ]] || continue
        [[ -z "$run_dir" || "$dir" -nt "$run_dir" ]] && run_dir="$dir"
    done
    [[ -n "$run_dir" ]] || {
        echo "error: no finished run under $ROOT/runs/ (run ./doall.sh first, or give --run DIR)" >&2
        exit 2
    }
fi
((${#inputs[@]})) || inputs=("$ROOT/data/demo/TestSet")

if ((${#inputs[@]} == 1)) && [[ -d "${inputs[0]}/xml" ]]; then # a BirdCLEF test folder
    test_dir="${inputs[0]}"
    audio=("$test_dir/wav")
    [[ -d "$test_dir/wav" ]] || audio=("$test_dir")
    args=(--xml-dir "$test_dir/xml" --audio "${audio[@]}")
else
    args=(--audio "${inputs[@]}")
fi
label="$(basename "$(realpath -m "${inputs[0]}")")"
if [[ -z "$out" && -L "$run_dir/predictions" ]]; then # planted in a run folder from elsewhere
    echo "error: $run_dir/predictions is a link: give --out, or remove the link" >&2
    exit 2
fi
if [[ -z "$out" ]]; then
    out="$run_dir/predictions/${label%.*}.csv"
    # named after the first input only: another input of that name replaces it
    [[ ! -e "$out" ]] || echo "note: replacing $out, made earlier (give --out to keep both)"
fi

echo "Predicting with $run_dir"
python "$ROOT/predict/predict.py" --run "$run_dir" "${args[@]}" --out "$out" \
    --human-csv "${out%.csv}.top5.csv" "${passed[@]}"
echo "Run file: $out"
