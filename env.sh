# Sourced by doall.sh, predict.sh and test.sh: make sure the project's virtual
# environment exists with its requirements and can import the project, then activate it.
#   VENV               where the environment lives (default: .venv beside this file)
#   REQUIREMENTS       which requirements file to install (default: requirements.txt)
# The environment is (re)installed only when the requirements file changed since
# the last successful install, so sourcing this is instant on later runs.

PROJECT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${VENV:-$PROJECT_ROOT/.venv}"
REQUIREMENTS="${REQUIREMENTS:-$PROJECT_ROOT/requirements.txt}"

_find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

_requirements_stamp() {
    # Any change to any requirements file triggers a reinstall.
    cat "$PROJECT_ROOT"/requirements*.txt | sha256sum | cut -c1-16
}

if [ ! -x "$VENV/bin/python" ]; then
    python_bin="$(_find_python)" || {
        echo "error: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
        return 1 2>/dev/null || exit 1
    }
    echo "Creating the virtual environment $VENV with $python_bin"
    "$python_bin" -m venv "$VENV" || { return 1 2>/dev/null || exit 1; }
fi

stamp_file="$VENV/.requirements-$(basename "$REQUIREMENTS").stamp"
if [ "$(cat "$stamp_file" 2>/dev/null)" != "$(_requirements_stamp)" ]; then
    echo "Installing $(basename "$REQUIREMENTS") into $VENV (first run: a few minutes)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip &&
        "$VENV/bin/python" -m pip install --quiet -r "$REQUIREMENTS" &&
        _requirements_stamp >"$stamp_file" || {
        echo "error: installing $REQUIREMENTS failed (see pip's message above)" >&2
        return 1 2>/dev/null || exit 1
    }
    # A file included with "-r other.txt" is installed too: mark it so.
    sed -n 's/^-r[[:space:]]*//p' "$REQUIREMENTS" | while read -r included; do
        cp "$stamp_file" "$VENV/.requirements-$(basename "$included").stamp"
    done
fi

# The project root on the environment's import path, as `pip install -e .` would put it: every
# command then runs as `python -m preprocess.load_data` from anywhere, or as
# `python preprocess/load_data.py`. Written where it does not name this checkout (a moved
# checkout, an existing environment), and left alone where it does: a shared environment
# another user installed stays untouched.
site_packages="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" &&
    { [[ "$(cat "$site_packages/birdclef-cnn.pth" 2>/dev/null)" == "$PROJECT_ROOT" ]] ||
        echo "$PROJECT_ROOT" >"$site_packages/birdclef-cnn.pth"; } || {
    echo "error: cannot make $PROJECT_ROOT importable in $VENV" >&2
    return 1 2>/dev/null || exit 1
}

# shellcheck disable=SC1091
source "$VENV/bin/activate"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
