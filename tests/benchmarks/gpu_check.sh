#!/usr/bin/env bash
# GPU smoke check, run by hand on a GPU machine (never in CI; under 3 minutes):
# the ddp example through `mlcloud train` on the local provider with accelerators: 1 vs the same
# script under bare torchrun, 3 trials (TRIALS=N for more) in alternating order; prints steps/s
# and the median ratio (target >= 0.98). Wheels for what that machine lacks (pydantic & co,
# Python 3.12 manylinux x86-64) may be given in .whl/ at the repo root; installed in /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/../.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export MLCLOUD_HOME; MLCLOUD_HOME=$(mktemp -d)
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
STEPS=${STEPS:-4000}
HP="{\"steps\": $STEPS, \"width\": 4096, \"batch_size\": 1024, \"checkpoint_every\": 1000, \"lr\": 0.01}"
SETS=(--set resources.accelerators=1 --set "command=[python3, train.py]" --set nodes=1 --set procs_per_node=1 --set spot=false
      --set "hyperparameters=$HP")

bare() {
  local ck; ck=$(mktemp -d)
  (cd examples/ddp && MLCLOUD_HPARAMS="$HP" MLCLOUD_CHECKPOINT_DIR="$ck" \
     MLCLOUD_MODEL_DIR="$ck/model" python3 -m torch.distributed.run --standalone \
     --nproc-per-node=1 train.py 2>&1) | sed -n 's/.*\[rank 0\] steps\/s: //p'
}
via_mlcloud() {
  python3 -m mlcloud.cli train examples/ddp/job.yaml "${SETS[@]}" --follow 2>&1 \
    | sed -n 's/.*\[rank 0\] steps\/s: //p'
}

python3 -m mlcloud.cli train examples/ddp/job.yaml "${SETS[@]}" --dry-run | head -30
ratios=()
for i in $(seq 1 "${TRIALS:-3}"); do
  # alternate which runs first, so GPU warm-up and clock drift do not favour one side
  if (( i % 2 )); then b=$(bare); m=$(via_mlcloud); else m=$(via_mlcloud); b=$(bare); fi
  r=$(python3 -c "print(round($m / $b, 4))")
  echo "trial $i: bare torchrun ${b} steps/s, mlcloud train ${m} steps/s, ratio ${r}"
  ratios+=("$r")
done
python3 -c "import statistics, sys; r=[float(x) for x in sys.argv[1:]]; \
print(f'median ratio mlcloud/bare: {statistics.median(r):.4f} (target >= 0.98)')" "${ratios[@]}"
