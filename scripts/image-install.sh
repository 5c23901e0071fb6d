#!/bin/sh
# Install hone into the image's Python: the one recipe the Containerfile runs, and the one
# tests/pipeline/test_pod_simulation.py runs in a fresh virtualenv to prove it.
#
#   scripts/image-install.sh SRC_DIR
#
# SRC_DIR     a copy of the repository (pyproject.toml, constraints.txt, hone/), as the Containerfile COPYs it
# PYTHON      the interpreter to install into (default: python3)
# HONE_EXTRAS the extras (default: all = pipelines, eval, kube, registry, lora, s3, tracking: everything the
#             pipeline components and the TrainJob pods import)
# TORCH_INDEX_URL  where torch comes from when it is not already installed at the pinned version (the CPU
#             image: https://download.pytorch.org/whl/cpu; empty: PyPI, whose Linux wheel is the CUDA build)
#
# Every version that matters is pinned by constraints.txt, kfp's exactly: the KFP-generated command of every
# component runs `pip install kfp==<compile-time version> --no-deps` first, which is then "already satisfied"
# and touches no network.
set -eu
SRC=${1:?usage: scripts/image-install.sh SRC_DIR}
PY=${PYTHON:-python3}
EXTRAS=${HONE_EXTRAS:-all}
case "$SRC" in /*) ;; *) SRC="./$SRC" ;; esac  # a path, never a package name for pip
CONSTRAINTS="$SRC/constraints.txt"

if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$PY" -m pip install -c "$CONSTRAINTS" --index-url "$TORCH_INDEX_URL" torch
fi
"$PY" -m pip install -c "$CONSTRAINTS" "$SRC[$EXTRAS]"
"$PY" -m pip check
# the versions the compiled pipelines expect (kfp exactly: see above)
"$PY" - "$CONSTRAINTS" <<'PYEOF'
import sys
from importlib.metadata import version

pins = {}
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if "==" in line:
        name, _, pinned = line.partition("==")
        pins[name.strip().lower()] = pinned.strip()
bad = []
for name in ("kfp", "kfp-kubernetes", "torch", "transformers"):
    have = version(name).split("+")[0]
    if name in pins and have != pins[name]:
        bad.append(f"{name} {have} (constraints.txt: {pins[name]})")
if bad:
    sys.exit("image-install: wrong versions: " + ", ".join(bad))
import hone.pipeline.kfp_components  # noqa: F401  (the components' imports resolve)
print("image-install: hone", version("hone"), "kfp", version("kfp"), "torch", version("torch"))
PYEOF
