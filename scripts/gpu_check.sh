#!/usr/bin/env bash
# One-shot GPU check (scripts/gpu_check.py): FlexAttention on CUDA, bf16 parity, the 7B-shape benchmark, a 7B
# LoRA step and the gpu-marked tests, in one JSON, within 8 minutes on one H100.
#
#     scripts/gpu_check.sh [OUT.json]          # default gpu_check.json; extra arguments go to gpu_check.py
#     scripts/gpu_check.sh smoke.json --smoke  # the CPU rehearsal at tiny shapes
#
# Each section has its own time budget (gpu_check.py SECTIONS, 460 s in all); the whole check is stopped at
# 480 s. The JSON is rewritten after every section, so a stopped check still leaves what has run.
set -u
cd "$(dirname "$0")/.."
out="${1:-gpu_check.json}"
shift || true
timeout --signal=TERM --kill-after=10 480 python scripts/gpu_check.py --out "$out" "$@"
status=$?
echo "gpu check: exit ${status}; results in ${out}"
exit "$status"
