#!/usr/bin/env bash
# The CUDA check, for a GPU machine with PyTorch but without internet: run from the repository root.
#
# Expects the project's wheel and its missing dependencies in .whl/ (pip download / pip wheel, see
# bench/README.md) and the shared CIFAR-10 tarball and ResNet weights in .devdata/. Runs the CUDA tests and the
# graph/equivalence/batched-scoring tests and the throughput bench, then the ResNet-56 quality study on the GPU for at most STUDY_SECONDS, and leaves the
# log, the table, the plot and the finished run directories (as runs.tgz) in $OUT.
set -u
OUT=${OUT:-/tmp/out}
STUDY_SECONDS=${STUDY_SECONDS:-360}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1 AUTOPRUNE_CACHE=/tmp/apcache
repo=$(pwd)

# Into the machine's own Python environment (it is thrown away afterwards), so that the `autoprune` script sits
# beside the interpreter, where the CLI tests look for it.
python3 -m pip install -q --no-index --no-deps --no-compile .whl/*.whl || exit 1
py=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py -c "import torch, torch_geometric, torch_pruning; print('torch', torch.__version__, torch.cuda.get_device_name())"

# From outside the checkout, so that `import autoprune` finds the installed package, not ./autoprune.
(cd /tmp && $py -m pytest -q -p no:cacheprovider "$repo/tests/test_cuda.py" "$repo/tests/test_equivalence.py" \
    "$repo/tests/test_graph.py" "$repo/tests/test_batched_scoring.py" -rs 2>&1 | tail -25)

# Candidates per second with K candidates per pass (issue: >= 100 ResNet-56 evaluations per second on one GPU).
timeout 240 $py bench/throughput.py --model resnet56 --weights .devdata/resnet56-cifar10jpeg.pt \
    --data-dir .devdata/cifar10-jpeg.tar.gz --target-flops 0.5 --masks 128 --candidate-batch 64 --threads 8 \
    --results "$OUT/throughput.md"

study=(--model resnet56 --weights .devdata/resnet56-cifar10jpeg.pt --data-dir .devdata/cifar10-jpeg.tar.gz
    --methods rl global-magnitude global-taylor random-search random-masks l1-uniform --targets 0.5
    --seeds 0 1 2 --evaluations 96 --eval-samples 500 --finetune-epochs 1 --threads 8
    --runs /tmp/runs --results "$OUT")
timeout "$STUDY_SECONDS" $py bench/quality.py "${study[@]}"
$py bench/quality.py "${study[@]}" --report-only > /dev/null
tar czf "$OUT/runs.tgz" -C /tmp --exclude=pruned.pt --exclude=checkpoint --exclude=tb runs
ls -la "$OUT"
