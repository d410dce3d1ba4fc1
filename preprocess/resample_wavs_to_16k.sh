#!/usr/bin/env bash
# Resample every audio file under IN_DIR to a 16 kHz, 16-bit, mono wav under OUT_DIR.
#
#   bash preprocess/resample_wavs_to_16k.sh IN_DIR OUT_DIR [--jobs N]
#
# IN_DIR/<path>.<ext> becomes OUT_DIR/<path>.wav for every wav, flac, mp3, ogg, aiff or au file
# (extension in any case, any rate, bit depth and channel count; channels are averaged).
# - Parallel: N SoX processes at once (default: all cores, `nproc`).
# - Resumable: each output is written to OUT_DIR/<path>.wav.part and renamed when complete, so
#   an existing .wav is always whole and is skipped (unless its input is newer). Leftover .part
#   files of a killed run are deleted at the start. Run one job per OUT_DIR at a time.
# - A file SoX cannot read is named with SoX's reason and skipped; the rest still converts.
#   So is a file SoX decodes only in part ("sox FAIL", e.g. a truncated flac), one that gives
#   no samples, and a float wav with NaN or infinite samples (which SoX would turn into clicks).
#   Two inputs that would give the same output (a.wav and a.flac) are reported the same way.
# - OUT_DIR must not be IN_DIR, lie inside it or contain it: inputs are never overwritten.
# Exit status: 0 when every file converted (or was already done), 1 when some failed (they are
# listed at the end; run again after fixing them), 2 for a usage error.
#
# SoX options, and why:
#   sox -D --no-glob IN -t wav -r 16000 -c 1 -b 16 -e signed-integer --no-glob OUT.part
# - `-r 16000` with SoX's default `rate` effect (high quality, linear phase), as the 2016
#   scripts' `sox in -r 16000 out` did.
# - `-c 1` averages the channels; `-b 16 -e signed-integer` also turns 24-bit, 32-bit, float
#   and 8-bit input into 16-bit PCM (the original kept the input's depth).
# - `-D` (no dither): SoX would otherwise add random TPDF dither of about 1 LSB, different on
#   every run, and turn digital silence into noise. Without it the output is plain rounding:
#   repeatable to the bit, and the same (within a few LSB) as the soxr fallback below. The CNN
#   sees no difference; the recordings' own noise floor is far above 1 LSB.
# - No gain change (-G, --norm): the 2016 noise filter's thresholds depend on the int16 scale,
#   so levels are kept. SoX clips the rare overshoot of the resampler and warns; the warning is
#   shown with the file's name.
# - `--no-glob`: SoX would otherwise expand wildcards in names such as `song[1].wav`.
# - `-t wav`: the temporary name's `.part` extension tells SoX nothing.
#
# Without SoX on PATH this runs preprocess/resample.py instead (soxr, wav input only), with
# the same arguments and contract; it says so in its output.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

die_usage() {
    echo "error: $1 (see --help)" >&2
    exit 2
}

jobs="$(nproc 2>/dev/null || echo 1)"
positional=()
while (($#)); do
    case "$1" in
    -h | --help) usage; exit 0 ;;
    -j | --jobs) (($# >= 2)) || die_usage "--jobs needs a number"; jobs="$2"; shift 2 ;;
    --jobs=*) jobs="${1#--jobs=}"; shift ;;
    --) shift; positional+=("$@"); break ;;
    -*) die_usage "unknown option '$1'" ;;
    *) positional+=("$1"); shift ;;
    esac
done
((${#positional[@]} == 2)) || die_usage "expected IN_DIR and OUT_DIR"
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || die_usage "--jobs must be a positive whole number, got '$jobs'"
max_jobs=$((4 * $(nproc 2>/dev/null || echo 1))) # as the Python commands: 4 per core
((${#jobs} <= 6 && jobs <= max_jobs)) || die_usage "--jobs must be at most $max_jobs, got $jobs"
in_dir="${positional[0]}"
out_dir="${positional[1]}"

project_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$project_root${PYTHONPATH:+:$PYTHONPATH}" # the Python it runs imports the project
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    python="$project_root/.venv/bin/python"
    [[ -x "$python" ]] || python=python3
fi
if ! command -v sox >/dev/null 2>&1; then
    echo "note: SoX is not installed; using the pure-Python soxr fallback (wav input only;" \
        "for flac/mp3/ogg install SoX: sudo apt-get install sox libsox-fmt-all)" >&2
    exec "$python" "$project_root/preprocess/resample.py" --jobs "$jobs" -- "$in_dir" "$out_dir"
fi

[[ -d "$in_dir" ]] || die_usage "input folder '$in_dir' does not exist"
in_abs="$(realpath -e -- "$in_dir")"
out_abs="$(realpath -m -- "$out_dir")"
if [[ "$out_abs" == "$in_abs" || "$out_abs/" == "${in_abs%/}/"* || "$in_abs/" == "${out_abs%/}/"* ]]; then
    die_usage "OUT_DIR '$out_dir' must be separate from IN_DIR '$in_dir' (not the same, not inside)"
fi
mkdir -p -- "$out_abs"
find "$out_abs" \( -type f -o -type l \) -name '*.wav.part' -delete # a killed run's; never a result

state_dir="$(mktemp -d)"
trap 'rm -rf -- "$state_dir"' EXIT
export IN_ABS="$in_abs" OUT_ABS="$out_abs" STATE_DIR="$state_dir"
export PYTHON_BIN="$python" RESAMPLE_PY="$project_root/preprocess/resample.py"

# A name with control characters (a newline, say) is printed shell-quoted, on one line.
show_name() {
    if [[ "$1" == *[[:cntrl:]]* ]]; then printf '%q' "$1"; else printf '%s' "$1"; fi
}

# Why SoX's result $2 of input $1 must not be used (SoX's messages: $3); nothing when it is
# fine. SoX says "sox FAIL" about a damaged file (a truncated flac) yet exits 0 and leaves a
# short or empty wav; and it turns NaN samples of a float wav into full-scale clicks without a
# word, so a float wav is read by resample.py --check, as the in-process path reads it.
unusable_reason() {
    local src="$1" part="$2" message="$3"
    if [[ "$message" == *"sox FAIL"* ]]; then
        printf '%s' "$message"
    elif [[ "$(sox --i -s "$part" 2>/dev/null)" == 0 ]]; then
        printf 'no samples'
    elif [[ "${src,,}" == *.wav || "${src,,}" == *.wave ]] &&
        [[ "$(sox --i -e "$src" 2>/dev/null)" == "Floating Point"* ]]; then
        "$PYTHON_BIN" "$RESAMPLE_PY" --check "$src" 2>&1 || true
    fi
}

# Convert IN_ABS/$2 to OUT_ABS/<$2 with .wav>; $1 is its position in the queue of TOTAL files.
# A failure is recorded as STATE_DIR/failed.<position>: the name and SoX's reason.
resample_one() {
    local position="$1" rel="$2" total="$TOTAL"
    local src="$IN_ABS/$rel" dst="$OUT_ABS/${rel%.*}.wav"
    local message reason
    if message="$({ mkdir -p -- "${dst%/*}" &&
        sox -D --no-glob "$src" -t wav -r 16000 -c 1 -b 16 -e signed-integer \
            --no-glob "$dst.part"; } 2>&1)"; then
        reason="$(unusable_reason "$src" "$dst.part" "$message")"
    else
        reason="${message:-SoX failed without a message}"
    fi
    if [[ -z "$reason" ]] && mv -f -- "$dst.part" "$dst"; then
        [[ -z "$message" ]] || echo "warning: $(show_name "$rel"): ${message//$'\n'/; }" >&2
    else
        rm -f -- "$dst.part"
        reason="${reason:-could not move the finished file into place}"
        printf '%s\0%s\0' "$rel" "$reason" >"$STATE_DIR/failed.$position"
        echo "FAILED $(show_name "$rel"): ${reason//$'\n'/; }" >&2
    fi
    local step=$(((total + 19) / 20)) # about 20 progress lines per run
    if ((position % step == 0 || position == total)); then
        echo "progress: $position/$total"
    fi
}
export -f resample_one unusable_reason show_name

# Plan: which inputs still need converting, and which collide on the same output name.
# The formats are preprocess/audio.py's AUDIO_SUFFIXES, the one list the Python stages use.
mapfile -t suffixes < <("$python" -c \
    'from preprocess.audio import AUDIO_SUFFIXES; print(*sorted(AUDIO_SUFFIXES), sep="\n")')
((${#suffixes[@]})) || {
    echo "error: cannot read the audio formats from $project_root/preprocess/audio.py" >&2
    exit 2
}
name_tests=()
for suffix in "${suffixes[@]}"; do
    name_tests+=(${name_tests[0]+-o} -iname "*$suffix")
done
mapfile -d '' inputs < <(cd -- "$in_abs" && find -L . -type f \( "${name_tests[@]}" \) -print0 |
    sort -z)
declare -A source_of # output path -> the input that makes it
todo=()
failed_names=()
failed_reasons=()
already_done=0
for rel in "${inputs[@]}"; do
    rel="${rel#./}"
    out_rel="${rel%.*}.wav"
    if [[ -n "${source_of[$out_rel]+set}" ]]; then
        failed_names+=("$rel")
        failed_reasons+=("would also become $(show_name "$out_rel"), made from $(show_name "${source_of[$out_rel]}")")
        continue
    fi
    source_of[$out_rel]="$rel"
    if [[ -f "$out_abs/$out_rel" && ! "$in_abs/$rel" -nt "$out_abs/$out_rel" ]]; then
        already_done=$((already_done + 1))
    else
        todo+=("$rel")
    fi
done

echo "resampling to 16 kHz mono 16-bit: ${#inputs[@]} audio files in $in_abs," \
    "$already_done already done, ${#todo[@]} to convert with $jobs jobs -> $out_abs"
run_status=0
if ((${#todo[@]})); then
    export TOTAL="${#todo[@]}"
    for i in "${!todo[@]}"; do printf '%s\0%s\0' "$((i + 1))" "${todo[i]}"; done |
        xargs -0 -n 2 -P "$jobs" bash -c 'resample_one "$1" "$2"' _ || run_status=$?
fi
for record in "$state_dir"/failed.*; do
    [[ -e "$record" ]] || continue
    { IFS= read -r -d '' name && IFS= read -r -d '' reason; } <"$record"
    failed_names+=("$name")
    failed_reasons+=("$reason")
done

converted=$((${#todo[@]} - $(find "$state_dir" -name 'failed.*' | wc -l)))
echo "summary: $converted converted, $already_done already done, ${#failed_names[@]} failed" \
    "($SECONDS s) -> $out_abs"
if ((run_status != 0)); then
    echo "error: the parallel run stopped early (xargs status $run_status); run again to resume" >&2
fi
if ((${#failed_names[@]})); then
    echo "failed (skipped):"
    for i in "${!failed_names[@]}"; do
        echo "  $(show_name "${failed_names[i]}"): ${failed_reasons[i]//$'\n'/; }"
    done
fi
((${#failed_names[@]} == 0 && run_status == 0)) || exit 1
