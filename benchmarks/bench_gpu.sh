#!/usr/bin/env bash
# Issue 10's table of GPU figures in one run of about 5 minutes (benchmarks/bench_gpu.py says
# what it times). The GPU machines have JAX and PyTorch but no TensorFlow, and no internet:
# the packages they lack travel as wheels in .whl/ (ignored by git).
#
#   bash benchmarks/bench_gpu.sh --fetch-wheels    # here, once: download the wheels to .whl/
#   bash benchmarks/bench_gpu.sh [ARGS]            # there (ARGS go to bench_gpu.py)
#   KERAS_BACKEND=torch bash benchmarks/bench_gpu.sh --models BirdClef   # the torch backend
#
# On the device machine keep the output whole where a time limit may cut the run short:
#   set -o pipefail; bash benchmarks/bench_gpu.sh 2>&1 | tee $OUT/gpu.log
# (a filter such as grep in between holds the lines back until it ends).
set -euo pipefail
cd "$(dirname "$0")/.."
# what the GPU image lacks (it has numpy, scipy, h5py, scikit-learn, tqdm, filelock, ...)
WHEELS=(keras==3.15.1 namex optree xmltodict hdf5plugin==7.1.0 soxr)

if [[ ${1:-} == --fetch-wheels ]]; then
  platforms=()
  for platform in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
      manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$platform")
  done
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl "${WHEELS[@]}"
  exit
fi
if [[ -d .whl ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/bench_gpu_site .whl/*.whl
  export PYTHONPATH=/tmp/bench_gpu_site${PYTHONPATH:+:$PYTHONPATH}
fi
# the stages' scripts import the project's packages, which no .pth names on that machine
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONUNBUFFERED=1
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
exec python3 benchmarks/bench_gpu.py "$@"
