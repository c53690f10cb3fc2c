#!/usr/bin/env bash
# The larger recipe on one GPU machine, as one timed job: the README's main job at the 512 x 384 canvas
# (everything else the default recipe), with as many epochs as fit a wall-clock budget, then the GPU
# speed rows (`spine-app bench speed`). The best model comes back as an fp16 state dict with the run's
# settings (run.tgz, split in 15 MB parts when OUT is a lent machine's output folder): `cat OUT/run.tgz.part-* |
# tar xzf - -C RUN_DIR` gives model.pt (fp16; it loads into the network, `spine-app publish RUN_DIR` takes it),
# the last checkpoint's run record without weights (checkpoint_epoch=N.pt) and the logs.
#
#   BUDGET=560 MAX_EPOCHS=50 OUT=gpu_out bash scripts/gpu_recipe.sh
#
# BUDGET: seconds for the whole job; the epochs are chosen from a timed 2-epoch probe run (a
# cosine schedule must know its length), or set EPOCHS to skip the probe: the training then stops at
# the budget, and the same command run again on the same machine resumes the run folder (resume: true).
# VAL_INTERVAL: epochs between validations (46 studies took 13 s on an H200, more than a training
# epoch's 9.4 s). Wheels in .whl/ (monai, ignite, nibabel, fire, pydicom) are installed first where
# the machine lacks them (docs/results.md "The larger recipe on a 15-minute GPU lease").
set -uo pipefail
START=$(date +%s)
BUDGET=${BUDGET:-560}
MAX_EPOCHS=${MAX_EPOCHS:-50}
CANVAS=${CANVAS:-"[512, 384]"}
WORKERS=${WORKERS:-10}
VAL_INTERVAL=${VAL_INTERVAL:-2}
EPOCHS=${EPOCHS:-}
OUT=${OUT:-gpu_out}
RUN=${RUN:-synthetic+synthetic_fov+synthetic_more-512x384-resnet18-gpu}
mkdir -p "$OUT" /tmp/pack/logs
LOGS=/tmp/pack/logs
export PYTHONUNBUFFERED=1
elapsed() { echo $(( $(date +%s) - START )); }
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; free -g | head -2; df -h /dev/shm;
  python3 -c "import torch, monai, ignite; print('torch', torch.__version__, 'monai', monai.__version__, 'ignite', ignite.__version__, torch.cuda.get_device_name(0))";
  git rev-parse HEAD 2>/dev/null; } 2>&1 | tee "$LOGS/machine.txt"

train() {  # train RUN_NAME EPOCHS WORKERS LOG
  python3 -m monai.bundle run training --config_file bundle/configs/train.yaml --patch_size "$CANVAS" \
    --epochs "$2" --num_workers "$3" --run_name "$1" --val_interval "$VAL_INTERVAL" >> "$4" 2>&1
}
# the data first (all cores), then a timed 2-epoch probe (caching, 2 epochs, one validation)
G0=$(date +%s)
# (train.yaml's own datalist and extra datalists, so the studies are the main job's)
python3 -c "from monai.bundle import ConfigParser; p = ConfigParser(); p.read_config('bundle/configs/train.yaml'); print(*(p.get_parsed_content(k) for k in ('datalist', 'extra_datalist', 'extra_default_datalist')))" > "$LOGS/data.log" 2>&1 || { tail -5 "$LOGS/data.log"; exit 1; }
GEN=$(( $(date +%s) - G0 ))
if [ -z "$EPOCHS" ]; then
P0=$(date +%s)
if ! VAL_INTERVAL=2 train probe 2 "$WORKERS" "$LOGS/probe.log"; then
  echo "probe failed with $WORKERS workers:"; tr '\r' '\n' < "$LOGS/probe.log" | grep -a -v "it/s" | tail -5
  WORKERS=0; P0=$(date +%s)
  VAL_INTERVAL=2 train probe 2 0 "$LOGS/probe.log" || { tr '\r' '\n' < "$LOGS/probe.log" | tail -30; exit 1; }
fi
PROBE=$(( $(date +%s) - P0 ))
# the probe's training epochs (Ignite's "SupervisedTrainer ... Epoch[N] Complete. Time taken: H:M:S"; an epoch
# that validates includes the validation)
EPOCHS_S=$(tr '\r' '\n' < "$LOGS/probe.log" | grep -a "SupervisedTrainer" | grep -a -o "Complete. Time taken: [0-9:.]*" | awk -F': ' '{split($2,t,":"); s+=t[1]*3600+t[2]*60+t[3]} END {printf "%d", s+0.5}')
[ "${EPOCHS_S:-0}" -gt 0 ] || EPOCHS_S=$PROBE
STARTUP=$(( PROBE - EPOCHS_S ))
LEFT=$(( BUDGET - $(elapsed) - 110 - STARTUP ))   # 110 s: the speed rows and packing
EPOCHS=$(( LEFT * 2 * 10 / (EPOCHS_S * 11) ))     # 10 % margin (the probe validates once in 2 epochs)
[ "$EPOCHS" -gt "$MAX_EPOCHS" ] && EPOCHS=$MAX_EPOCHS
echo "data ${GEN}s; probe ${PROBE}s (epochs ${EPOCHS_S}s, start-up ${STARTUP}s); ${LEFT}s left -> $EPOCHS epochs, $WORKERS workers" | tee "$OUT/plan.txt"
else
echo "data ${GEN}s; $EPOCHS epochs (resumed where the run folder has a checkpoint), $WORKERS workers" | tee "$OUT/plan.txt"
fi
T0=$(date +%s)
timeout $(( BUDGET - $(elapsed) - 100 )) bash -c "$(declare -f train); CANVAS='$CANVAS' VAL_INTERVAL='$VAL_INTERVAL' train '$RUN' $EPOCHS $WORKERS '$LOGS/train_full.log'"
echo "training rc $? in $(( $(date +%s) - T0 ))s" | tee -a "$OUT/plan.txt"
tr '\r' '\n' < "$LOGS/train_full.log" | grep -a -v "it/s\]" | gzip > "$LOGS/train.log.gz"; rm -f "$LOGS/train_full.log"
timeout 45 python3 -m spine_app.cli bench speed --device cuda --canvas "[384, 288]" > "$OUT/speed.txt" 2>&1
timeout 45 python3 -m spine_app.cli bench speed --device cuda --canvas "[512, 384]" >> "$OUT/speed.txt" 2>&1
python3 - "$RUN" <<'PY' || cp "bundle/runs/$RUN/model.pt" /tmp/pack/model_fp32.pt
import glob, os, sys
import torch
run = sys.argv[1]
d = f"bundle/runs/{run}"
state = torch.load(f"{d}/model.pt", map_location="cpu", weights_only=True)
torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, "/tmp/pack/model.pt")
ckpts = sorted(glob.glob(f"{d}/checkpoint_epoch=*.pt"), key=lambda p: int(p.split("=")[-1][:-3]))
ck = torch.load(ckpts[-1], map_location="cpu", weights_only=False)
meta = {k: v for k, v in ck.items() if k not in ("model", "optimizer", "lr_scheduler")}
torch.save(meta, "/tmp/pack/" + os.path.basename(ckpts[-1]))
print("packed", ckpts[-1], meta.get("validation"))
PY
cp "$OUT/plan.txt" "$OUT/speed.txt" $LOGS/ 2>/dev/null
tar czf - -C /tmp/pack . | split -b 15M - "$OUT/run.tgz.part-"
ls -la "$OUT"; echo "total $(elapsed)s"
