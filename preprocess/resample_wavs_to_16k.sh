#!/usr/bin/env bash
# Resample every audio file under IN_DIR to a 16 kHz, 16-bit, mono wav under OUT_DIR.
#
#   bash preprocess/resample_wavs_to_16k.sh IN_DIR OUT_DIR [--jobs N]
#
# IN_DIR/<path>.<ext> becomes OUT_DIR/<path>.wav for every wav, flac, mp3, ogg, opus, aiff, au, caf,
# w64 or wavpack file, with SoX (without it: soxr and libsndfile, no wavpack); in parallel, resumable,
# and every file that fails named with the reason. Exit status: 0 all converted or already done, 1 some failed,
# 2 usage error. This runs preprocess/resample.py, whose docstring has the details (the SoX
# options and why) and which prediction uses too; --help lists its options.
set -euo pipefail
project_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    python="$project_root/.venv/bin/python"
    [[ -x "$python" ]] || python=python3
fi
# the project on the import path, for a Python where env.sh has not put it
export PYTHONPATH="$project_root${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" "$project_root/preprocess/resample.py" "$@"
