#!/usr/bin/env bash
# One prepared pass on a lent GPU machine (no network there): GPU tests, then the full-size attention, latency and
# training benchmarks.
# Wheels the machine's image lacks travel in .whl/ (see the device tool's README); logs go to $OUT when set.
set -uo pipefail
out="${OUT:-/tmp/gpu_session}"; mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
timeout 240 python3 -m pytest -q -p no:cacheprovider -o timeout=200 test/test_static_inference.py test/test_rdt.py \
  2>&1 | tee "$out/pytest.log" | tail -15
echo "== attention_backends"
timeout 120 python3 bench/attention_backends.py --device cuda 2>&1 | tee "$out/attention.log"
latency() {  # full-size chunk latency; arguments go to policy_latency.py
  echo "== policy_latency --full-size $*"
  timeout 300 python3 bench/policy_latency.py --device cuda --full-size --runs 20 "$@" 2>&1 \
    | grep -v "^Loading\|^Writing" | tee -a "$out/latency.log" | tail -16
}
latency --profile --compile --plot "$out/latency.png"
latency --steps 1 --modes cuda_graph
echo "== train_throughput --full-size"
timeout 240 python3 bench/train_throughput.py --device cuda --full-size --steps 10 2>&1 \
  | grep -v "^Loading\|^Writing" | tee "$out/train.log" | tail -25
