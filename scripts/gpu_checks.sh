#!/usr/bin/env bash
# Every check that needs a GPU, in one short run (about 3 minutes on one H100, before bench_trainer was added). Run from the repository root on
# a CUDA machine:
#
#   bash scripts/gpu_checks.sh [OUTDIR]
#
# 1. the `gpu`-marked tests: the CUDA buffer store with asynchronous prefetch on its own stream (k = 1 and 4),
#    the CuPy NCCL backend at world size 1 (bootstrapped through a store and over a process group; NCCL refuses
#    two ranks on one GPU, so multi-rank logic is covered by the gloo tests on the CPU), every strategy of the
#    learner on CUDA, and `ptychosteer train` on a simulated stream with NCCL and the CuPy buffer communicator
#    (checkpoint and resume included);
# 2. scripts/bench_buffer.py --cuda: step-time overhead (a)/(b)/(c) and sample(r) latency at world size 1 on
#    CUDA, for the torch.distributed NCCL and the CuPy NCCL backends;
# 3. scripts/bench_trainer.py --device cuda --nproc 1 --frame-size 64 --bf16 --compile: the stream trainer's
#    samples/s against a standalone loop, plain, under bf16 autocast and under torch.compile (the GPU regime of
#    the "trainer that never idles": 15-20 training samples per frame of a 2 kHz detector). Not yet run;
# 4. scripts/bench_reconstruct.py --device cuda --frame 64: the iterative engine on the GPU (frame-updates/s of
#    rPIE and LSQML at 64x64, quality per family) and the learned model's per-frame cost against it. Not yet run.
#
# The tests' conftest imports pyzmq. On a machine without the project's non-GPU dependencies (the project's
# lent GPU machines have torch, CuPy, h5py, click and pytest but not pyzmq, hdf5plugin, lz4 or
# dectris-compression), bring wheels for its Python in .whl/ (git-ignored), e.g. here:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl pyzmq hdf5plugin lz4
#   python3.12 -m pip wheel --no-deps -w .whl dectris-compression     # builds from source
# and this script installs them into /tmp/site first.
set -u -o pipefail
out=${1:-${OUT:-gpu-checks}}
mkdir -p "$out"
py=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
status=0
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  echo "cores: $(nproc)"
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())'
  "$py" -c 'import cupy; from cupy.cuda import nccl; print("cupy", cupy.__version__, "nccl", nccl.get_version())' || true
} 2>&1 | tee "$out/machine.txt"
# -W default: report warnings from this machine's library versions instead of failing on them
"$py" -m pytest -q -m gpu tests -p no:cacheprovider -W default 2>&1 | tee "$out/gpu_tests.txt" || status=1
"$py" scripts/bench_buffer.py --cuda --sizes 32,64 --steps 200 2>&1 | tee "$out/bench_buffer_cuda.txt" || status=1
"$py" scripts/bench_trainer.py --device cuda --nproc 1 --frame-size 64 --nconv 16 --b 64 --r 32 --frames 40000 \
    --bf16 --compile 2>&1 | tee "$out/bench_trainer_cuda.txt" || status=1
"$py" scripts/bench_reconstruct.py --device cuda --frame 64 --object-px 576 --families cells lithography \
    2>&1 | tee "$out/bench_reconstruct_cuda.txt" || status=1
echo "gpu checks: exit $status; logs in $out" | tee -a "$out/machine.txt"
exit $status
