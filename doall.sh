#!/usr/bin/env bash
# The whole job: data -> 16 kHz wavs -> chunk dataset (HDF5) -> trained CNN -> BirdCLEF run
# file -> official MAP. Each stage is its own command (shown as it runs) and skips work
# already done, so running this again after a crash continues where it stopped.
#
#   ./doall.sh                  the SYNTHETIC demo dataset (made-up species, generated here)
#   ./doall.sh --tiny           the same, tiny and in two epochs (a smoke test, for CI;
#                               or DOALL_TINY=1 ./doall.sh)
#   ./doall.sh --train-dir BirdCLEF/TrainingSet [--test-dir BirdCLEF/TestSet --truth GT.csv]
#   ./doall.sh --url https://.../birdclef.tar.gz [--sha256 HEX]    download, unpack, then as above
#   ./doall.sh --csv labels.csv --audio-dir clips/      any audio task: CSV file,label[,...]
#   ./doall.sh --class-folders clips/                   any audio task: one folder per class
#
# Data
#   --train-dir DIR     BirdCLEF training folder with wav/ and xml/ (any audio format and rate)
#   --test-dir DIR      test folder: wav/ + xml/ (MediaIds from the XMLs) or plain audio files
#   --truth FILE|DIR    ground truth for the test folder: MediaId;ClassId;background1,... CSV
#                       or a training-style XML folder (default for the demo: its ground truth)
#   --csv FILE --audio-dir DIR   generic: CSV with columns file,label (files under DIR)
#   --class-folders DIR          generic: DIR/<label>/<audio files>
#   --url URL [--sha256 HEX]     download (resumable) into DATA_DIR/downloads and unpack;
#                       without --train-dir, the unpacked folder named TrainingSet (and
#                       TestSet) is used
# Where things go (defaults inside this project)
#   --name NAME         name of the dataset's work folder and run (default: demo, demo-tiny,
#                       the archive's name with --url, or the training folder's parent name)
#   --data-dir DIR      demo data and downloads (default data/)
#   --work-dir DIR      resampled wavs and HDF5 files (default work/); this data's are in
#                       WORK_DIR/NAME
#   --runs-dir DIR      training runs (default runs/); the run is RUNS_DIR/NAME
# Recipe
#   --recipe 2016|modern  2016 (default): the paper's method, bit for bit. modern: log-mel
#                       front end, chunk length from the data, no noise filter, cyclic padding
#                       (preprocess/load_data.py --help lists each part and its option)
# Stage options (passed through)
#   --model FILE        model file (default: the recipe's, train/model-BirdClef.py for 2016)
#   --epochs N  --batch-size N  --patience N  --seed N  --top-n N  --top-k N  --workers N
#   --load-args "..."  --train-args "..."  --predict-args "..."   anything else, per stage,
#                       quoted as in a shell: --train-args "--runs-table 'my runs/t.csv'"
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$ROOT/env.sh"

die() {
    echo "error: $*" >&2
    exit 2
}

stage() {
    echo
    echo "== $*"
}

refuse_links() { # the paths this script chooses inside the folders it was given: never links
    # (planted in a data, work or run folder from elsewhere, they would send its writes there)
    local path
    for path in "$@"; do
        if [[ -L "$path" ]] || { [[ -f "$path" ]] && (($(stat -c %h -- "$path") > 1)); }; then
            die "$path is a link (or a second name of another file): remove it, or choose other folders"
        fi
    done
}

refuse_non_files() { # the files this script keeps its records in: absent, or plain files
    # (a folder would fail a write without a word of why; opening a pipe waits forever)
    local path
    for path in "$@"; do
        [[ ! -e "$path" || -f "$path" ]] ||
            die "$path is not a file (a folder, a pipe?): remove it, or choose other folders"
    done
}

words() { # words ARRAY "TEXT": split TEXT as a shell would (quotes, backslashes), expanding nothing
    local -n into="$1"
    python -c 'import shlex, sys; shlex.split(sys.argv[1])' "$2" 2>/dev/null ||
        die "cannot split '$2' into words (unbalanced quotes?)"
    mapfile -d '' -t into < <(python -c 'import shlex, sys
sys.stdout.write("".join(word + "\0" for word in shlex.split(sys.argv[1])))' "$2")
}

check_name() { # a name that is one folder's: it goes into work/NAME, runs/NAME, data/NAME
    [[ -n "$1" && "$1" != . && "$1" != .. && "$1" != */* && "$1" != *$'\n'* ]] ||
        die "'$1' cannot name a dataset's folders (from --name, or the data's folder): give --name NAME"
}

check_number() { # OPTION VALUE LOWEST [HIGHEST]: an option's value, when given, a whole number
    # in range (checked now: the stage that reads it may start after hours of the others)
    local option="$1" value="$2" lowest="$3" highest="${4:-}"
    [[ -z "$value" ]] && return
    [[ "$value" =~ ^[0-9]{1,18}$ ]] && ((10#$value >= lowest)) &&
        { [[ -z "$highest" ]] || ((10#$value <= highest)); } ||
        die "--$option takes a whole number from $lowest${highest:+ to $highest}, not '$value'"
}

run() { # show a stage's command, then run it
    printf '+'
    printf ' %q' "$@"
    echo
    "$@"
}

tiny=0 train_dir="" test_dir="" truth="" csv="" audio_dir="" class_folders="" url="" sha256=""
name="" data_dir="$ROOT/data" work_dir="$ROOT/work" runs_dir="$ROOT/runs"
model="" epochs="" batch_size="" patience="" seed="" top_n=""
top_k="" workers="" load_args="" train_args="" predict_args="" recipe=""
while (($#)); do
    case "$1" in
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    --tiny) tiny=1; shift ;;
    --train-dir | --test-dir | --truth | --csv | --audio-dir | --class-folders | --url | \
        --sha256 | --name | --data-dir | --work-dir | --runs-dir | --model | --epochs | \
        --batch-size | --patience | --seed | --top-n | --top-k | --workers | --load-args | \
        --train-args | --predict-args | --recipe)
        (($# >= 2)) || die "$1 needs a value"
        option="${1#--}"
        printf -v "${option//-/_}" '%s' "$2"
        shift 2 ;;
    *) die "unknown option '$1' (see ./doall.sh --help)" ;;
    esac
done
[[ -z "$recipe" || "$recipe" == 2016 || "$recipe" == modern ]] ||
    die "--recipe is 2016 or modern, not '$recipe'"
[[ "${DOALL_TINY:-0}" == 1 ]] && tiny=1
[[ -z "$name" ]] || check_name "$name" # before anything is written under it
check_number epochs "$epochs" 1
check_number batch-size "$batch_size" 1
check_number patience "$patience" 0
check_number seed "$seed" 0
check_number top-n "$top_n" 1
check_number top-k "$top_k" 1 100
# the most workers preprocess/cli.most_workers allows
check_number workers "$workers" 1 $((4 * $(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)))
if [[ -z "$url" ]]; then # (an archive's folders appear only once it is unpacked)
    [[ -z "$test_dir" || -e "$test_dir" ]] || die "--test-dir $test_dir: no such file or folder"
    [[ -z "$truth" || -e "$truth" ]] || die "--truth $truth: no such file or folder"
    [[ -z "$truth" || -n "$test_dir" || -z "$train_dir$csv$class_folders" ]] ||
        die "--truth needs --test-dir: the recordings to predict and score against it"
fi
[[ -z "$top_k" || -n "$test_dir$url" || -z "$train_dir$csv$class_folders" ]] ||
    echo "note: --top-k is for the prediction of a --test-dir, and none is given" >&2
words load_extra "$load_args"
words train_extra "$train_args"
words predict_extra "$predict_args"
((tiny)) && epochs="${epochs:-2}"
SECONDS=0

# ---- 1. data ---------------------------------------------------------------------------------
demo=0
if [[ -n "$url" ]]; then
    stage "download and unpack $url"
    downloads="$data_dir/downloads"
    archive="$downloads/$(basename "${url%%\?*}")"
    stem="$(basename "$archive")"
    stem="${stem%.zip}" stem="${stem%.tgz}" stem="${stem%.tar*}" # birds.v2.tar.gz -> birds.v2
    name="${name:-$stem}" # never from the archive's contents: they could name another job's
    check_name "$name"
    unpacked="$data_dir/$name"
    # curl and wget append to the .part; mv would move a download into a folder named ARCHIVE
    refuse_links "$downloads" "$archive.part" "$archive" "$archive.unpacked" "$archive.lock" \
        "$archive.url"
    mkdir -p "$downloads"
    refuse_non_files "$archive.lock" "$archive.url"
    # one run at a time downloads and unpacks an archive: two would append to one .part
    exec {download_lock}>>"$archive.lock"
    lock='import fcntl, sys
fcntl.flock(int(sys.argv[1]), fcntl.LOCK_EX | (0 if sys.argv[2] == "wait" else fcntl.LOCK_NB))'
    python -c "$lock" "$download_lock" now 2>/dev/null || {
        echo "waiting for another run that downloads or unpacks $archive"
        python -c "$lock" "$download_lock" wait
    }
    # where the archive came from: another URL of the same file name would otherwise get this
    # one's data (compared only while there is data: a download that failed at once is not)
    if [[ -f "$archive.url" ]] && [[ -e "$archive" || -s "$archive.part" ]]; then
        from_url="$(cat "$archive.url")" || die "cannot read $archive.url"
        [[ "$from_url" == "$url" ]] || die "$archive came from $from_url, not $url: give this \
one a --data-dir of its own, or delete $archive.url if it is the same file (a new token)"
    else # (an archive of a version before this record: taken to be of this URL)
        record="$(mktemp "$downloads/.url.XXXXXX")"
        printf '%s\n' "$url" >"$record"
        mv -T "$record" "$archive.url"
    fi
    if [[ ! -f "$archive" ]]; then
        if command -v curl >/dev/null; then
            run curl --fail --location --progress-bar --continue-at - --output "$archive.part" "$url"
        else
            run wget --continue --output-document "$archive.part" "$url"
        fi
        if [[ -n "$sha256" ]]; then
            echo "$sha256  $archive.part" | sha256sum --check --quiet ||
                die "checksum of $archive.part differs from --sha256 (delete it to download again)"
        fi
        mv -T "$archive.part" "$archive" # only a whole (and checked) download gets the name
    elif [[ -n "$sha256" ]]; then # an archive downloaded before: checked whenever asked
        echo "$sha256  $archive" | sha256sum --check --quiet ||
            die "checksum of $archive differs from --sha256 (delete it to download again)"
    fi
    # into a new folder of its own; no member lands outside it, whatever its name or type
    run python "$ROOT/preprocess/unpack.py" "$archive" "$unpacked"
    exec {download_lock}>&- # the rest of this run does not keep another from the archive
    if [[ -z "$train_dir$csv$class_folders" ]]; then
        train_dir="$(find "$unpacked" -type d -name TrainingSet -print -quit)"
        [[ -n "$train_dir" ]] || die "no TrainingSet folder in $unpacked: give --train-dir"
    fi
    [[ -n "$test_dir" ]] || test_dir="$(find "$unpacked" -type d -name TestSet -print -quit)"
fi
if [[ -z "$train_dir$csv$class_folders" ]]; then
    demo=1
    if ((tiny)); then
        name="${name:-demo-tiny}"
        demo_args=(--recordings-per-species 4 --test-per-species 1)
    else
        name="${name:-demo}"
        demo_args=()
        epochs="${epochs:-20}"
    fi
    # Small batches: many optimizer steps per epoch, so BatchNormalization's moving averages
    # (used at validation and prediction) settle within minutes on a CPU.
    batch_size="${batch_size:-32}"
    stage "demo dataset (SYNTHETIC: made-up bird-like species, not real recordings)"
    refuse_links "$data_dir/$name"
    run python "$ROOT/preprocess/make_demo_dataset.py" --out "$data_dir/$name" "${demo_args[@]}"
    train_dir="$data_dir/$name/TrainingSet"
    if [[ -z "$test_dir" ]]; then
        test_dir="$data_dir/$name/TestSet"
        truth="${truth:-$test_dir/ground_truth.csv}"
    fi
fi
if [[ -n "$csv" ]]; then
    [[ -n "$audio_dir" ]] || die "--csv needs --audio-dir (the folder its file column is relative to)"
    [[ -f "$csv" ]] || die "$csv: no such file"
    source_dir="$audio_dir"
    name="${name:-$(basename "$(realpath "$audio_dir")")}"
elif [[ -n "$class_folders" ]]; then
    source_dir="$class_folders"
    name="${name:-$(basename "$(realpath "$class_folders")")}"
else
    [[ -d "$train_dir/wav" && -d "$train_dir/xml" ]] ||
        die "$train_dir must hold wav/ and xml/ (a BirdCLEF TrainingSet folder)"
    source_dir="$train_dir/wav"
    name="${name:-$(basename "$(dirname "$(realpath "$train_dir")")")}"
fi
[[ -d "$source_dir" ]] || die "$source_dir: no such folder"
check_name "$name"
work_dir="$work_dir/$name" # each data set a work folder of its own, as each its run folder
refuse_links "$work_dir"
run_dir="$runs_dir/$name"
refuse_links "$run_dir"
# training takes only a folder of its own files: refused now, not after the data's preparation
[[ "$(realpath -m "$work_dir")"/ != "$(realpath -m "$run_dir")"/* ]] ||
    die "the work folder $work_dir is the run folder $run_dir or inside it: give --work-dir \
and --runs-dir folders of their own"
mkdir -p "$work_dir" "$runs_dir"
# the data a work folder was made from: another data set of the same folder name (the
# default --name) would otherwise add its recordings to this one's (inside this project,
# such as the demo's, relative to it: a project moved elsewhere keeps its work)
source_path="$(realpath "$source_dir")"
project="$(realpath "$ROOT")"
[[ "$source_path" == "$project"/* ]] && source_path="${source_path#"$project"/}"
refuse_non_files "$work_dir/source.txt"
if [[ ! -f "$work_dir/source.txt" ]]; then # (read, never written in place: a link is harmless)
    record="$(mktemp "$work_dir/.source.txt.XXXXXX")" # made here, exclusively: no link followed
    printf '%s\n' "$source_path" >"$record"
    # the first of two runs wins; mv where the file system has no hard links (exFAT, FAT)
    ln -T "$record" "$work_dir/source.txt" 2>/dev/null || [[ -e "$work_dir/source.txt" ]] ||
        mv -T "$record" "$work_dir/source.txt"
    rm -f "$record"
fi
made_from="$(cat "$work_dir/source.txt")" || die "cannot read $work_dir/source.txt"
[[ "$made_from" == "$source_path" ]] || die "$work_dir holds the data of $made_from, not of \
$source_path: give this data a --name (or --work-dir) of its own, or delete $work_dir to start over"

# ---- 2. resample to 16 kHz ------------------------------------------------------------------
# --prune: the work folder holds what the data holds now, so training never reads the output
# of a recording since deleted or moved
resample() { # exit 1 (some files failed, listed) is not fatal: those files are left out
    local status=0
    run bash "$ROOT/preprocess/resample_wavs_to_16k.sh" "$1" "$2" --prune \
        ${workers:+--jobs "$workers"} || status=$?
    ((status != 130)) || exit 130 # Ctrl-C: as every stage ends on it
    ((status <= 1)) || die "resampling $1 failed (status $status)"
}
refuse_links "$work_dir/train_16k" "$work_dir/test_16k"
stage "resample to 16 kHz"
resample "$source_dir" "$work_dir/train_16k"

# ---- 3. chunk dataset -----------------------------------------------------------------------
stage "spectrogram chunks -> $work_dir/train.h5"
if [[ -n "$csv" ]]; then
    labels=(--csv "$csv")
elif [[ -n "$class_folders" ]]; then
    labels=(--class-folders)
else
    labels=(--xml-dir "$train_dir/xml")
fi
run python "$ROOT/preprocess/load_data.py" --wav-dir "$work_dir/train_16k" "${labels[@]}" \
    --out "$work_dir/train.h5" ${recipe:+--recipe "$recipe"} ${top_n:+--top-n "$top_n"} \
    ${workers:+--workers "$workers"} "${load_extra[@]}"

# ---- 4. train ---------------------------------------------------------------------------------
stage "train ${model:+$(basename "$model") }-> $run_dir"
# --resume: continues a run killed mid-way, starts a new one in an empty folder
train_options=(--data "$work_dir/train.h5" ${model:+--model "$model"} --out "$run_dir" --resume
    ${recipe:+--recipe "$recipe"} ${epochs:+--epochs "$epochs"}
    ${batch_size:+--batch-size "$batch_size"} ${patience:+--patience "$patience"}
    ${seed:+--seed "$seed"} "${train_extra[@]}")
if [[ -f "$run_dir/metrics.json" ]] && python - "${train_options[@]}" <<'EOF' 2>/dev/null
import sys
from train.run_folder import finished_as_asked
from train.train_model import parse_args
sys.exit(0 if finished_as_asked(parse_args(sys.argv[1:])) else 1)
EOF
then
    echo "training already complete in $run_dir (delete it to train again)"
else # new, killed midway, or asked with other data or settings (train_model.py then says so)
    run python "$ROOT/train/train_model.py" "${train_options[@]}"
fi

# ---- 5. predict and 6. evaluate ---------------------------------------------------------------
if [[ -z "$test_dir" ]]; then
    echo
    echo "No --test-dir: the run's own held-out test recordings, if it kept any (--test-fraction;"
    echo "the modern recipe keeps none), are scored in $run_dir/metrics.json."
    echo "Predict other recordings with: ./predict.sh FOLDER --run $run_dir"
    exit 0
fi
stage "predict $test_dir"
run_file="$run_dir/predictions/$(basename "$(realpath "$test_dir")").csv"
refuse_links "$run_dir/predictions" "${run_file%.csv}.report"
# named after the test folder: another one of the same name replaces it, as predict.sh says
[[ ! -e "$run_file" ]] || echo "note: replacing $run_file, made earlier (of this --test-dir, or \
of another folder of its name)"
# the test recordings as they are (the run file and top-5 CSV name them), resampled by
# predict.py into its cache work/NAME/test_16k/resampled/, with the resampler training used
test_audio="$test_dir"
[[ -d "$test_dir/wav" ]] && test_audio="$test_dir/wav"
inputs=(--audio "$test_audio" --work-dir "$work_dir/test_16k")
[[ -d "$test_dir/xml" ]] && inputs+=(--xml-dir "$test_dir/xml")
run python "$ROOT/predict/predict.py" --run "$run_dir" "${inputs[@]}" --out "$run_file" \
    --human-csv "${run_file%.csv}.top5.csv" ${top_k:+--top-k "$top_k"} \
    ${workers:+--workers "$workers"} "${predict_extra[@]}"

if [[ -z "$truth" ]]; then
    echo
    echo "Run file: $run_file (no --truth given, so not scored)"
    exit 0
fi
stage "evaluate against $truth"
run python "$ROOT/predict/evaluate.py" --run-file "$run_file" --truth "$truth" \
    --classes "$run_dir/classes.json" --json "${run_file%.csv}.scores.json" \
    --report "${run_file%.csv}.report"
echo
echo "Run file: $run_file"
echo "Report (per class, confusion matrix, weakest classes): ${run_file%.csv}.report/report.html"
python - "${run_file%.csv}.scores.json" <<'EOF'
import json, sys
scores = json.load(open(sys.argv[1]))
print(f"MAP (foreground) {scores['map_foreground']:.4f}, with background "
      f"{scores['map_with_background']:.4f}, top-1 accuracy {scores['top1_accuracy']:.4f} "
      f"on {scores['recordings']} test recordings; chance level (random ranking of "
      f"{scores['n_classes']} classes) {scores['chance_map_foreground']:.4f}")
EOF
echo "Finished in $((SECONDS / 60)) min $((SECONDS % 60)) s."
if ((demo)); then
    echo "Note: the demo data is SYNTHETIC (made-up bird-like species generated by"
    echo "preprocess/make_demo_dataset.py); its MAP shows the pipeline works, not how it does on birds."
fi
