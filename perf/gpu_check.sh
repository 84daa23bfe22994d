#!/usr/bin/env bash
# The GPU check: one command, run from the source tree (no pip install), that stops itself
# within a time budget and leaves whatever it measured in OUTDIR.
#
#   perf/gpu_check.sh OUTDIR [BUDGET_S=480]
#
# Stages, in order; each gets a share of the time still left (and a cap), runs under
# `timeout`, and a stage that runs out of time is cut off without stopping the rest:
#   1. environment         -> OUTDIR/env.txt        (card, driver, torch, triton, commit)
#   2. CUDA tests, quick   -> OUTDIR/tests.log      (pytest -v -rfE -k "not hypothesis", --maxfail=10, in 8
#                                                    processes where pytest-xdist is there; the launch
#                                                    plans' and kernel families' tests first, one config
#                                                    per launch), then the stream-K tests on their own
#                                                    (100 s; if they fail or hang, TRITONCONV_STREAM_K=0
#                                                    keeps stream-K out of the later stages)
#   2b. where the time goes: perf/diagnose.py on two ResNet-50 layers (kernel, graph, host time per
#      family, launch plans on and off); its table is appended to summary.md
#   2c. host cost: perf/host_cost.py, host time per call by route (op, functional, autograd, a
#      training step) and its spread over the caller's stack depth, appended to summary.md
#   2d. race check (up to 90 s): perf/race_check.py, every tile config of the TMA families pinned in turn on
#      ResNet-50 layers, three calls each (same bits? right? kernel time), as rows of results.csv
#      (kernel race_check) that the report renders into summary.md
#   3. forward sweep       ResNet-50 batch 32, fp16, channels_last, every provider
#   4. backward sweep      grad_input, grad_weight, forward_backward on seven ResNet-50 layers, fp16
#   4b. forward sweep      the same as 3 in bf16, without Inductor
#   5. end to end          perf/resnet50.py: eager inference, inference from a CUDA graph, a
#                          training step, that step from a CUDA graph, and eager inference with
#                          BatchNorm folded (each provider's way), all convs tritonconv vs
#                          cuDNN, fp16; after each
#                          eager row a host profile of its step (issue time, cProfile by own
#                          time: perf/resnet50.py --profile), appended to summary.md
#   6. report              OUTDIR/summary.md, details.md, plot.png from OUTDIR/results.csv
# plus OUTDIR/gpu_check.log (every stage's output) and OUTDIR/tuning-cache.tar.gz (the
# tuning choices made, reusable with TRITONCONV_CACHE_DIR). That is 8 files.
# The summary is printed last.
#
# Environment: PYTHON (default python3); TRITONCONV_COMMIT (the device copy of the tree may
# have no .git: pass the commit from where it was sent); TRITONCONV_RUN_ID; TRITONCONV_CACHE_DIR.
# TUNING_CACHE_TAR=path/to/tuning-cache.tar.gz starts from an earlier run's tuning choices (same
# card, same versions; entries for other code are ignored with a warning), which saves most of
# the tuning time on a fresh machine; Inductor's autotuning timings travel in it too
# (TORCHINDUCTOR_CACHE_DIR defaults to TRITONCONV_CACHE_DIR/inductor). With it, the check also
# sets TRITONCONV_TUNE_HINTS=1 (unless set): where a kernel changed since that run, its choices
# still run, untimed, wherever the kernel's pruning keeps them (tuning.py, "Hints"), so the minutes
# go to measuring; the summary's "Tuning cost" table counts them. TRITONCONV_TUNE_HINTS=0 retunes.
# FAMILY_PRESETS=mobilenetv2,convnext_t adds a forward fp16 sweep of those presets after
# ResNet-50's (issue 6: the depthwise, 1x1 and stem families' effect), against cuDNN only (issue 6's
# bar; FAMILY_PROVIDERS=tritonconv,cudnn,inductor,... adds others); it takes its share of
# the budget from the later stages, so give the check more time (or pass a tuning cache) with it.
# FAMILY_LAYERS="features.3.conv.1.0 (depthwise),..." sweeps those layers of the presets only
# (their names as `tritonconv bench --list` prints them).
# GPU_CHECK_STAGES=bf16,backward,e2e runs those steps only, in that order (after the environment;
# keys: tests, streamk, diagnose, host, race, forward, families, backward, bf16, e2e; default all of
# them in the order above), for a check that goes straight to what earlier ones left unmeasured.
# GPU_CHECK_E2E_MODES (default infer,graph,train,train_graph,folded) orders the end-to-end step's modes.
# GPU_CHECK_DRY_RUN=1 swaps in the smoke preset and a tiny network: a check of this script's
# plumbing on a machine without a GPU (everything then runs through Triton's interpreter).
# Copy the results into the repository with: python perf/save_results.py OUTDIR
set -u -o pipefail

if [ $# -lt 1 ]; then
    echo "usage: perf/gpu_check.sh OUTDIR [BUDGET_S=480]" >&2
    exit 2
fi
OUTDIR=$1
BUDGET=${2:-480}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd) || exit 2

PY=${PYTHON:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export TRITONCONV_RUN_ID=${TRITONCONV_RUN_ID:-gpucheck-$(date -u +%Y%m%dT%H%M%SZ)}
if [ -z "${TRITONCONV_COMMIT:-}" ]; then
    if sha=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null); then
        [ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ] && sha="$sha-dirty"
        TRITONCONV_COMMIT=$sha
    else
        TRITONCONV_COMMIT=unknown
    fi
fi
export TRITONCONV_COMMIT
CACHE_DIR=${TRITONCONV_CACHE_DIR:-$HOME/.cache/tritonconv}
export TRITONCONV_CACHE_DIR=$CACHE_DIR
# Inductor's cache beside ours, so that its max-autotune timings (inductor/cache/<card and
# versions hash>, a small JSON) travel in tuning-cache.tar.gz too: the sweep of 2026-11-26 spent
# about 9 s per layer compiling and timing Inductor's conv templates and compared 11 of 23 layers
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$CACHE_DIR/inductor}

if [ -n "${TUNING_CACHE_TAR:-}" ]; then
    mkdir -p "$CACHE_DIR" && tar -xzf "$TUNING_CACHE_TAR" -C "$CACHE_DIR" ||
        echo "could not extract $TUNING_CACHE_TAR into $CACHE_DIR" >&2
    export TRITONCONV_TUNE_HINTS=${TRITONCONV_TUNE_HINTS:-1}
fi

LOG="$OUTDIR/gpu_check.log"
CSV="$OUTDIR/results.csv"
: >"$LOG"
START=$(date +%s)
END=$((START + BUDGET))
RESERVE=30 # seconds kept for the report at the end
STAGES=()

log() { echo "$*" | tee -a "$LOG" >&2; }

# seconds left for stages
left() { echo $((END - RESERVE - $(date +%s))); }

# stage NAME SHARE_PERCENT CAP_S COMMAND...: run COMMAND with SHARE_PERCENT of the time left
# (at most CAP_S); the command may read its own budget from $STAGE_S.
stage() {
    local name=$1 share=$2 cap=$3
    shift 3
    local l t s rc
    l=$(left)
    if [ "$l" -lt 20 ]; then
        log "== [$name] skipped: out of time"
        STAGES+=("$name | skipped (out of time) | 0")
        return 0
    fi
    # the last step of the check has nothing after it to leave time for
    [ "${LAST_STEP:-0}" = 1 ] && share=100
    t=$((l * share / 100))
    [ "$t" -gt "$cap" ] && t=$cap
    [ "$t" -lt 20 ] && t=20
    [ "$t" -gt "$l" ] && t=$l
    export STAGE_S=$t
    log "== [$name] up to ${t}s: $*"
    s=$(date +%s)
    # a new bash runs the (exported) function or command, so that timeout can stop it
    timeout -k 10 "$t" bash -c '"$@"' "$name" "$@" >>"$LOG" 2>&1
    rc=$?
    local took=$(($(date +%s) - s))
    case $rc in
        0) STAGES+=("$name | ok | $took") ;;
        124 | 137) STAGES+=("$name | stopped at its time limit (${t}s) | $took") ;;
        *) STAGES+=("$name | exit $rc | $took") ;;
    esac
    log "== [$name] exit $rc after ${took}s"
}

# a sweep stage: the sweep stops starting measurements 15 s before the stage's limit
sweep() {
    $PY -m tritonconv.bench --out "$OUTDIR" --csv "$CSV" --run-id "$TRITONCONV_RUN_ID" --no-report \
        --warmup-ms 10 --rep-ms 50 \
        --time-budget $((STAGE_S > 30 ? STAGE_S - 15 : STAGE_S * 2 / 3)) "$@"
}

env_info() {
    {
        echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "host: $(hostname)"
        echo "commit: $TRITONCONV_COMMIT"
        echo "run id: $TRITONCONV_RUN_ID"
        echo "budget: ${BUDGET}s"
        echo "PYTHONPATH: $PYTHONPATH"
        echo "tuning cache: $TRITONCONV_CACHE_DIR"
        echo
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit,temperature.gpu \
            --format=csv 2>&1 || echo "nvidia-smi failed"
        echo
        $PY - <<'EOF'
import os, platform, sys
import torch, triton
print("python", sys.version.split()[0], platform.platform())
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("triton", triton.__version__)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs",
          f"{p.total_memory / 2**30:.1f} GiB", f"L2 {getattr(p, 'L2_cache_size', 0) / 2**20:.0f} MiB")
else:
    print("CUDA: not available")
import tritonconv
print("tritonconv", tritonconv.__version__, "from", os.path.dirname(tritonconv.__file__))
import torch._inductor.config as c
print("inductor max_autotune_conv_backends:", getattr(c, "max_autotune_conv_backends", "(no such setting)"))
EOF
    } >"$OUTDIR/env.txt" 2>&1
}

quick_tests() {
    local extra=()
    $PY -c "import pytest_timeout" 2>/dev/null && extra=(--timeout 120)
    # the tests compile a kernel per shape and config on first use, one CPU core each: with
    # pytest-xdist (the GPU machines have it) 8 processes share the card and the compiling.
    # Serially, the check of 2026-11-26 got through 86 tests (6% of them) in its 79 s.
    $PY -c "import xdist" 2>/dev/null && extra+=(-n "${TEST_WORKERS:-8}")
    # shellcheck disable=SC2086  # TESTS is a list of paths, in the order to run them
    # --maxfail, not -x: a failure in a family no GPU has run must not hide the core tests.
    # -v names each test as it ends, and pytest gets a SIGINT 15 s before the stage's limit, so
    # that a cut-off run still prints its short summary (-rfE: the failures and errors so far):
    # the check of 2026-11-26 at 283a32b was cut at 22% with five failures and no names
    timeout -s INT $((STAGE_S > 40 ? STAGE_S - 15 : STAGE_S * 2 / 3)) \
        $PY -m pytest $TESTS --maxfail=10 -v -rfE -k "not hypothesis and not stream_k" -p no:cacheprovider \
        "${extra[@]}" >"$OUTDIR/tests.log" 2>&1
    local rc=$?
    grep -E "^(FAILED|ERROR) " "$OUTDIR/tests.log" | head -n 20
    tail -n 1 "$OUTDIR/tests.log"
    return $rc
}

diagnose() {
    # outside OUTDIR: the device tool returns at most 8 files, and the check writes 8
    $PY perf/diagnose.py --preset "$PRESET" --layers "$DIAG_LAYERS" --batch "$BATCH" --dtype "$FP16" \
        --out "$DIAG_DIR" --time-budget $((STAGE_S * 2 / 3))
}

race_check() {
    # every tile config of the TMA families pinned in turn at ResNet-50 sizes, three calls each:
    # same bits and right answers (tap_tma raced on short reductions, 2026-11-26; its first two
    # cases test the diagnosis, triton#9433, with the register-hazard rule off and on)
    # shellcheck disable=SC2086  # RACE_ARGS is a list of words
    # its rows go to the check's CSV, and the report renders its section of summary.md from them
    mkdir -p "$DIAG_DIR" && $PY perf/race_check.py --out "$DIAG_DIR" --csv "$CSV" --run-id "$TRITONCONV_RUN_ID" \
        --time-budget $((STAGE_S * 2 / 3)) $RACE_ARGS
}

host_cost() {
    # host time per call by route (the op, tritonconv.functional, autograd, a training step), and
    # its spread over the caller's stack depth (CPython 3.12's frame chunks: host_cost.py's doc)
    mkdir -p "$DIAG_DIR" && $PY perf/host_cost.py --calls 1000 --depths 160 --depth-step 4 >"$DIAG_DIR/host_cost.md"
    # and through Triton's own launcher, for the unrolled one's saving (plans.py, "_unroll")
    { echo; echo "Through Triton's launcher (TRITONCONV_DIRECT_LAUNCH=0):"; echo
      TRITONCONV_DIRECT_LAUNCH=0 $PY perf/host_cost.py --calls 1000; } >>"$DIAG_DIR/host_cost.md"
}

e2e() {
    # shellcheck disable=SC2086  # E2E_ARGS is a list of words
    # folded (BatchNorm folded, each provider's way) last: its fused epilogues tune anew
    $PY perf/resnet50.py --batch "$BATCH" --dtype "$FP16" --layout channels_last --csv "$CSV" \
        --modes "${GPU_CHECK_E2E_MODES:-infer,graph,train,train_graph,folded}" \
        --run-id "$TRITONCONV_RUN_ID" --time-budget $((STAGE_S > 40 ? STAGE_S - 20 : STAGE_S * 2 / 3)) \
        --profile "$DIAG_DIR" --profile-top 30 $E2E_ARGS
}

export PY OUTDIR CSV BUDGET TRITONCONV_CACHE_DIR
export -f sweep env_info quick_tests diagnose race_check host_cost e2e

# The stage is cut off at its share of the budget, so what no GPU has run comes first: the
# families (the TMA kernels among them), then the core forward and backward, then the rest.
# tests/conftest.py turns autotuning off (TRITONCONV_TUNE=0): one compile per kernel and shape.
FIRST_TESTS="tests/test_plans.py tests/test_families.py tests/test_conv2d.py tests/test_backward.py"
TESTS="$FIRST_TESTS $(cd "$ROOT" && ls tests/test_*.py | grep -v -x -F -e tests/test_families.py \
    -e tests/test_conv2d.py -e tests/test_backward.py -e tests/test_plans.py | tr '\n' ' ')"
# RACE_ARGS="--cases 1,2" picks cases; RACE_CAP_S (default 90) caps the race stage's seconds
PRESET=resnet50 BATCH=32 FP16=fp16 BF16=bf16 E2E_ARGS="" RACE_ARGS="${RACE_ARGS:-}"
# bf16 against cuDNN (issue 6's bar) without Inductor, whose autotuning took 100 of the fp16
# forward's 138 s at aebf6ce: the bf16 stage then fits in what the check leaves it
BF16_PROVIDERS=tritonconv,cudnn,im2col,unfold
# layer4.0.conv2: a 3x3 stride-2 dgrad of four 7x7 phases, tap_tma_phased's case with its smallest
# grids per phase (a launch of 56 tiles of 128x128 each where tap_tma launches per phase)
BACKWARD_LAYERS="conv1,layer1.0.conv2,layer2.0.conv2,layer2.0.downsample.0,layer3.1.conv1,layer4.0.conv2,layer4.1.conv2"
# layer3.0.conv3: gemm1x1_tma timed bimodal in the sweep of 2026-11-26 (p20 0.016, median 0.038 ms)
DIAG_LAYERS="layer1.0.conv2,layer3.0.conv3,layer3.1.conv1"
DIAG_DIR="${TMPDIR:-/tmp}/tritonconv-diagnose-$$"
if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ]; then
    PRESET=smoke BATCH=2 FP16=fp32 TESTS=tests/test_bench.py BACKWARD_LAYERS="3x3,1x1/2" DIAG_LAYERS="1x1/2"
    BF16_PROVIDERS=tritonconv,im2col,unfold
    E2E_ARGS="--tiny --image 32 --reps 1 --profile-steps 1" RACE_ARGS="--batch 1 --cases gemm1x1_tma"
    [ -n "${FAMILY_PRESETS:-}" ] && FAMILY_PRESETS=smoke && FAMILY_PROVIDERS=${FAMILY_PROVIDERS:-tritonconv,im2col}
    torch_cuda=$($PY -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
    [ "$torch_cuda" = 1 ] || export TRITON_INTERPRET=1
fi
export PRESET BATCH FP16 BF16 BF16_PROVIDERS TESTS E2E_ARGS RACE_ARGS DIAG_LAYERS DIAG_DIR

log "tritonconv GPU check: budget ${BUDGET}s, output $OUTDIR, run $TRITONCONV_RUN_ID, commit $TRITONCONV_COMMIT"
log "tuning cache: $CACHE_DIR${TUNING_CACHE_TAR:+ (from $TUNING_CACHE_TAR)}; hints from stale choices: ${TRITONCONV_TUNE_HINTS:-0}"
stage environment 100 60 env_info
# One step of the check by its key (GPU_CHECK_STAGES).
run_step() {
    case $1 in
        tests) stage "tests (quick)" 18 110 quick_tests ;;
        streamk) streamk_smoke ;;
        diagnose) stage "where the time goes" 10 60 diagnose ;;
        host) stage "host cost" 5 30 host_cost ;;
        race) stage "race check" 15 "${RACE_CAP_S:-90}" race_check ;;
        forward) stage "forward fp16" 50 600 sweep --preset "$PRESET" --batch "$BATCH" --dtype "$FP16" \
            --layout channels_last --modes forward ;;
        families)
            if [ -n "${FAMILY_PRESETS:-}" ]; then
                stage "forward fp16, $FAMILY_PRESETS" 40 600 sweep \
                    --preset "$FAMILY_PRESETS" --batch "$BATCH" --dtype "$FP16" --layout channels_last --modes forward \
                    --providers "${FAMILY_PROVIDERS:-tritonconv,cudnn}" --layers "${FAMILY_LAYERS:-}"
            else
                log "== [families] skipped: FAMILY_PRESETS is not set"
            fi ;;
        backward) stage "backward fp16" 45 600 sweep --preset "$PRESET" --batch "$BATCH" --dtype "$FP16" \
            --layout channels_last --modes grad_input,grad_weight,forward_backward --layers "$BACKWARD_LAYERS" ;;
        bf16) stage "forward bf16" 30 600 sweep --preset "$PRESET" --batch "$BATCH" --dtype "$BF16" \
            --layout channels_last --modes forward --providers "$BF16_PROVIDERS" ;;
        e2e) stage "end to end fp16" 100 600 e2e ;;
        *) log "== unknown stage '$1' in GPU_CHECK_STAGES (known: $DEFAULT_STAGES)"
           STAGES+=("$1 | unknown stage: skipped | 0") ;;
    esac
    return 0
}

# Stream-K's programs wait for each other's flags: if that misbehaves on this card (a test that
# fails, or hangs until its timeout), the sweeps leave stream-K out rather than hang themselves.
# (gemm1x1_tma's and tap_tma's: gemm1x1_tma's alone took 21-22 s on the H100 at 7d4db6f and
# d080a04; tap_tma's compile a kernel per problem more, hence 100)
streamk_smoke() {
    [ "$(left)" -gt 100 ] || return 0
    log "== [stream-K smoke] up to 100s"
    local s
    s=$(date +%s)
    if timeout -k 5 100 $PY -m pytest tests/test_families.py -q -x -k stream_k -p no:cacheprovider >>"$LOG" 2>&1; then
        STAGES+=("stream-K smoke | ok | $(($(date +%s) - s))")
    else
        export TRITONCONV_STREAM_K=0
        STAGES+=("stream-K smoke | failed or hung: TRITONCONV_STREAM_K=0 for the rest | $(($(date +%s) - s))")
        log "== [stream-K smoke] failed or hung: stream-K configs off for the rest of the check"
    fi
}

# The steps and their order. The backward before bf16: grad_weight and forward+backward (issue
# 6's bar) are measured nowhere else, where bf16 runs the forward's kernels in another dtype.
# Each stage takes its share of the time still left, and the last one run all of it (up to its
# cap): a check of the families alone gives them the whole budget, not 40 % of it (2026-11-27:
# 80 of 240 s, and 22 of mobilenetv2's 30 layers skipped).
DEFAULT_STAGES="tests,streamk,diagnose,host,race,forward,families,backward,bf16,e2e"
IFS=, read -r -a STEPS <<<"${GPU_CHECK_STAGES:-$DEFAULT_STAGES}"
log "stages: ${STEPS[*]}"
for i in "${!STEPS[@]}"; do
    step=${STEPS[$i]//[[:space:]]/}
    LAST_STEP=0
    [ "$i" = $((${#STEPS[@]} - 1)) ] && LAST_STEP=1
    [ -n "$step" ] && run_step "$step"
done

# report: rendered from the CSV; then the stage table; the summary is printed last
if [ -s "$CSV" ]; then
    timeout -k 5 $((RESERVE - 5)) $PY -m tritonconv.bench.report "$CSV" --out "$OUTDIR" \
        --run-id "$TRITONCONV_RUN_ID" >>"$LOG" 2>&1 || log "report failed (see $LOG)"
else
    echo "# tritonconv GPU check" >"$OUTDIR/summary.md"
    echo >>"$OUTDIR/summary.md"
    echo "No benchmark rows were written (see gpu_check.log)." >>"$OUTDIR/summary.md"
fi
if [ -d "$CACHE_DIR" ]; then
    # our tuning cache, and of Inductor's only its autotuning timings (its compiled kernels
    # would weigh megabytes)
    (
        cd "$CACHE_DIR" || exit 0
        entries=()
        for e in * .[!.]*; do [ -e "$e" ] && [ "$e" != inductor ] && entries+=("$e"); done
        [ -d inductor/cache ] && entries+=(inductor/cache)
        [ ${#entries[@]} -gt 0 ] && tar -czf "$OUTDIR/tuning-cache.tar.gz" "${entries[@]}"
    ) 2>>"$LOG" || true
fi
if [ -s "$DIAG_DIR/diagnose.md" ]; then
    { echo; sed 's/^# Where the time goes/## Where the time goes (perf\/diagnose.py)/' "$DIAG_DIR/diagnose.md"; } >>"$OUTDIR/summary.md"
fi
if [ -s "$DIAG_DIR/host_cost.md" ]; then
    { echo; echo "## Host time per call (perf/host_cost.py)"; echo; cat "$DIAG_DIR/host_cost.md"; } >>"$OUTDIR/summary.md"
fi
if [ -s "$DIAG_DIR/e2e_profile.md" ]; then
    # the end-to-end stage's host profiles (perf/resnet50.py --profile): issue time per step and
    # where it goes, per eager mode and provider
    { echo; echo "## Host profiles of the end-to-end steps"; echo; sed 's/^## /### /' "$DIAG_DIR/e2e_profile.md"; } >>"$OUTDIR/summary.md"
fi
{
    echo
    echo "## GPU check stages"
    echo
    echo "| stage | result | seconds |"
    echo "| --- | --- | --- |"
    for s in "${STAGES[@]}"; do echo "| $s |"; done
    echo
    echo "Tests: $(tail -n 1 "$OUTDIR/tests.log" 2>/dev/null || echo 'not run')"
    grep -E "^(FAILED|ERROR) " "$OUTDIR/tests.log" 2>/dev/null | head -n 20 | sed 's/^/- /'
    echo
    echo "Total: $(($(date +%s) - START)) s of a ${BUDGET} s budget. Files: $(cd "$OUTDIR" && ls | tr '\n' ' ')"
} >>"$OUTDIR/summary.md"
cat "$OUTDIR/summary.md"
