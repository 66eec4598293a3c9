#!/usr/bin/env bash
# Set up everything espnet-allinone needs on a fresh machine, idempotently:
# system packages (espeak-ng, festival, sox, sctk), a virtual environment in .venv and
# the package with its test extras. Safe to re-run; it skips what is done.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${ALLINONE_VENV:-$repo/.venv}
python=${PYTHON:-python3}
apt_packages=(espeak-ng sox sctk libsndfile1 flac festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts)

missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "[setup] installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "[setup] missing system packages: ${missing[*]}" >&2
    echo "[setup] run as root, or ask an administrator to run:" >&2
    echo "        sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
stamp="$venv/.allinone-installed"
if [ ! -f "$stamp" ] || [ "$repo/setup.py" -nt "$stamp" ]; then
  echo "[setup] installing espnet-allinone and its dependencies (first time: ~10 min)"
  # pip >= 25 refuses espnet's ci_sdr dependency; espnet pins setuptools < 74.
  "$venv/bin/python" -m pip install -q "pip<25" "setuptools<74" wheel
  "$venv/bin/python" -m pip install -q -e "$repo[test]"
  # espnet_onnx, only for benchmarks/bench_inference.py: its typeguard pin conflicts
  # with ESPnet's, so without its dependencies (it works with ESPnet's typeguard).
  "$venv/bin/python" -m pip install -q --no-deps espnet_onnx==0.2.1 six \
    || echo "[setup] espnet_onnx not installed: bench_inference.py skips its rows" >&2
  touch "$stamp"
fi
echo "[setup] ready: $venv"
