#!/usr/bin/env bash
# The GPU check, one prepared script: no network, under 8 minutes on one H100 (the stages' time limits add up to
# 450 s; a stage cut short keeps the modes it finished).
#
#   bash bench/gpu_check.sh                      # on the GPU machine
#   GPU_CHECK_SMOKE=1 bash bench/gpu_check.sh    # tiny sizes on whatever device is there: a CPU smoke run, ≤ 3 min
#
# (a) the device (nvidia-smi, torch.cuda); (b) the DP step (book-keeping and Opacus hooks) against the non-private
# step (bench/dp_step.py, each mode in a fresh process) for the default model (random input images: an offline
# machine has no MNIST; the step time does not depend on them) and for Stable Diffusion 1.5's UNet architecture,
# random weights, at 256 px (latent 32×32; its config is embedded in bench/dp_step.py); (c) each mode's peak GPU
# memory (torch.cuda.max_memory_allocated; the process' peak RSS on a CPU); (d) precision fp32 against bf16
# (FinetuneConfig.precision); (e) the clipping bound under bf16 on the device itself (each clipped per-sample
# gradient has norm ≤ C, against a float64 reference); (f) the tiny-SD sweep (bench/tiny_sd_sweep.py) on the device.
#
# Writes under $OUT when set, else bench/results/gpu/: device.txt, dp_step-*.json, bound.json, summary.json,
# table.txt (the text table) and log.txt (everything printed).
# Environment: PYTHON (default: .venv/bin/python when present, else python3); GPU_CHECK_SMOKE=1 (tiny sizes);
# GPU_CHECK_SWEEP=0/1 (the sweep stage; default 1, and 0 in a smoke run).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
DEST="${OUT:-bench/results/gpu}"
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"
SMOKE="${GPU_CHECK_SMOKE:-0}"
if [ "$SMOKE" = 1 ]; then SWEEP="${GPU_CHECK_SWEEP:-0}"; else SWEEP="${GPU_CHECK_SWEEP:-1}"; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1  # nothing is downloaded
LOG="$DEST/log.txt"
: >"$LOG"
START=$(date +%s)
declare -A RC SECS
ORDER=()

stage() {  # stage NAME LIMIT_SECONDS COMMAND...: runs it under a time limit, output to the log, rc and time kept
  local name=$1 limit=$2 t0 rc
  shift 2
  echo "== $name (limit ${limit} s): $*" | tee -a "$LOG"
  t0=$(date +%s)
  timeout -k 15 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  RC[$name]=$rc
  ORDER+=("$name")
  SECS[$name]=$(( $(date +%s) - t0 ))
  echo "== $name: rc $rc in ${SECS[$name]} s" | tee -a "$LOG"
}

# (a) the device
{
  echo "== nvidia-smi"
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  echo "== torch"
  "$PY" - <<'EOF'
import json, platform, torch
info = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "python": platform.python_version(), "machine": platform.platform(), "cpu_threads": torch.get_num_threads()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(device=p.name, capability=f"{p.major}.{p.minor}", total_memory_gib=round(p.total_memory / 2**30, 1),
                multiprocessors=p.multi_processor_count, devices=torch.cuda.device_count(),
                bf16_supported=torch.cuda.is_bf16_supported(), cudnn=torch.backends.cudnn.version(),
                matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32, cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
print(json.dumps(info, indent=2))
EOF
} 2>&1 | tee "$DEST/device.txt" | tee -a "$LOG"

# (b)-(d) the DP step against the non-private step, fp32 and bf16
if [ "$SMOKE" = 1 ]; then
  DEFAULT_ARGS=(--batch 8 --physical 4 --repeats 1)
  SD_ARGS=(--arch sd15-tiny --resolution 64 --batch 4 --physical 2 --repeats 1 --modes non-private,bookkeeping)
else
  DEFAULT_ARGS=(--batch 512 --physical 128 --repeats 5)  # the CPU measurements' settings (docs/performance.md)
  SD_ARGS=(--arch sd15 --resolution 256 --batch 64 --physical 16 --repeats 3 --modes non-private,bookkeeping,hooks)
fi
stage dp_step-default 100 "$PY" bench/dp_step.py --data random --layers all --rounds 1 --precisions fp32,bf16 \
  --modes non-private,bookkeeping,hooks "${DEFAULT_ARGS[@]}" --out "$DEST/dp_step-default.json"
stage dp_step-sd15 190 "$PY" bench/dp_step.py --layers all --rounds 1 --precisions fp32,bf16 "${SD_ARGS[@]}" \
  --out "$DEST/dp_step-sd15.json"

# (e) the clipping bound under bf16 on this device: the tape's float32 norms against a float64 reference built from
# its own records (tests/privacy/test_mixed_precision.py), every example clipped
stage bound 40 "$PY" - "$DEST/bound.json" <<'EOF'
import json, sys
import torch
from dpsearch.device import pick_device
from dpsearch.privacy.bookkeeping import Tape
from tests.privacy.test_mixed_precision import _clipped, _per_sample_from_records
from tests.test_finetune import _setup

dev = pick_device("auto")
out = {"device": str(dev)}
for ghost in ("always", "never"):
    m, module, trainable, z, y = _setup(layers="1-4", n=8)
    m.to(dev)
    z, y = z.to(dev), y.to(dev)
    noise, t = torch.randn_like(z), torch.randint(0, 1000, (len(z),), device=dev)
    norms = {}
    for precision in ("fp32", "bf16"):
        tape = Tape(module, ghost=ghost, precision=precision)
        module(z, y, noise, t).mean().backward()
        norms[precision] = tape.per_sample_norms().detach()
        if precision == "bf16":
            ref = _per_sample_from_records(tape, trainable)
            clip = 0.5 * ref.norm(dim=1).min().item()
            worst = _clipped(tape, ref, clip).norm(dim=1).max().item() / clip
            norm_err = (norms["bf16"].double() / ref.norm(dim=1) - 1).abs().max().item()
            dtypes = sorted({str(r.dtype) for s in tape.slots for rec in s.records[:1]
                             for r in (rec if isinstance(rec, tuple) else rec.values())})
        tape.remove()
    bf16_vs_fp32 = (norms["bf16"] / norms["fp32"] - 1).abs().max().item()
    ok = worst <= 1 + 1e-6 and norms["bf16"].dtype == torch.float32 and norm_err < 1e-5
    out[ghost] = {"max_clipped_norm_over_C": worst, "norm_rel_error_vs_float64": norm_err,
                  "bf16_vs_fp32_norm_rel_diff": bf16_vs_fp32, "record_dtypes": dtypes, "ok": ok}
    print(f"ghost {ghost}: max ‖clipped g_i‖/C = {worst:.9f}, norm error vs float64 {norm_err:.2e}, bf16 vs fp32 "
          f"norms {bf16_vs_fp32:.2e}, records {dtypes}: {'OK' if ok else 'BOUND BROKEN'}")
json.dump(out, open(sys.argv[1], "w"), indent=2)
sys.exit(0 if all(out[g]["ok"] for g in ("always", "never")) else 1)
EOF

# (f) the tiny-SD sweep on this device (its storage stays out of $DEST; the report is copied)
if [ "$SWEEP" = 1 ] && [ -f bench/tiny_sd_sweep.py ]; then
  SWEEP_DIR="${TMPDIR:-/tmp}/gpu_check_tiny_sd_sweep"
  if [ "$SMOKE" = 1 ]; then TRIALS=1; else TRIALS=2; fi
  stage tiny_sd_sweep 120 "$PY" bench/tiny_sd_sweep.py --trials "$TRIALS" --out "$SWEEP_DIR"
  cp "$SWEEP_DIR/report.html" "$DEST/tiny_sd_sweep_report.html" 2>/dev/null || true
else
  echo "== tiny_sd_sweep: skipped (GPU_CHECK_SWEEP=$SWEEP)" | tee -a "$LOG"
fi

# The summary (JSON) and the text table
STAGES=""
for k in "${ORDER[@]}"; do STAGES="$STAGES$k=${RC[$k]}:${SECS[$k]},"; done
"$PY" - "$DEST" "$SMOKE" "$STAGES" "$(( $(date +%s) - START ))" <<'EOF' | tee -a "$LOG"
import json, sys
from pathlib import Path

dest, smoke, stages, total = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3], int(sys.argv[4])
stages = {k: {"rc": int(v.split(":")[0]), "seconds": int(v.split(":")[1])}
          for k, v in (s.split("=") for s in stages.strip(",").split(",") if s)}
summary = {"smoke": smoke, "total_seconds": total, "stages": stages, "dp_step": {}}
lines = [f"{'CPU/SMOKE run: tiny sizes, not a measurement' if smoke else 'GPU check'} ({total} s in all)", ""]
for name in ("default", "sd15"):
    f = dest / f"dp_step-{name}.json"
    if not f.exists():
        lines.append(f"dp_step {name}: no result (rc {stages.get('dp_step-' + name, {}).get('rc')}; see log.txt)")
        continue
    d = json.loads(f.read_text())
    summary["dp_step"][name] = d
    a = d["args"]
    cut = "" if d.get("complete") else " [CUT SHORT: the modes below are those that finished]"
    lines.append(f"{a['arch']} on {d['device']} (torch {d['torch']}){cut}: layers {a['layers']}, "
                 f"{d['rows'][0]['trainable_params']:,} trainable, logical batch {a['batch']}, physical {a['physical']}"
                 + (f", {a['resolution']} px" if a["arch"] != "default" else ", random images"))
    lines.append(f"| precision | mode | s / step | × non-private (same precision) | × fp32 non-private | peak MB ({d['peak_kind']}) |")
    lines.append("|---|---|---|---|---|---|")
    x = lambda v: "–" if v is None else f"{v:.2f}"
    for r in d["rows"]:
        lines.append(f"| {r['precision']} | {r['mode']} | {r['seconds_per_step']:.4f} | {x(r['ratio_to_nonprivate'])} | "
                     f"{x(r['ratio_to_fp32_nonprivate'])} | {r['peak_mb']:.0f} |")
    for e in d.get("failed", []):
        lines.append(f"| {e['precision']} | {e['mode']} | FAILED: {e['error'][:120]} | | | |")
    lines.append("")
bound = dest / "bound.json"
if bound.exists():
    b = summary["bound"] = json.loads(bound.read_text())
    for g in ("always", "never"):
        lines.append(f"bf16 clipping bound on {b['device']}, ghost {g}: max ‖clipped g_i‖/C = "
                     f"{b[g]['max_clipped_norm_over_C']:.9f}, bf16 vs fp32 norms {b[g]['bf16_vs_fp32_norm_rel_diff']:.1e}: "
                     f"{'OK' if b[g]['ok'] else 'BOUND BROKEN'}")
for k, v in stages.items():
    lines.append(f"stage {k}: rc {v['rc']}, {v['seconds']} s")
(dest / "summary.json").write_text(json.dumps(summary, indent=2))
(dest / "table.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
print(f"wrote {dest}/table.txt and summary.json")
EOF
FAILED=0
for k in "${ORDER[@]}"; do [ "${RC[$k]}" -ne 0 ] && FAILED=1; done
exit $FAILED
