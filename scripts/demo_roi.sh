#!/usr/bin/env bash
# ROI encoder demo: synthetic scenes -> ROI features -> DDP training (2 processes) -> val.py,
# trained encoder versus an untrained one on held-out validation pairs.
#   bash scripts/demo_roi.sh OUT_DIR      (make demo-roi uses demo_runs/roi)
set -euo pipefail
OUT="${1:?usage: scripts/demo_roi.sh OUT_DIR}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
TORCHRUN="$(dirname "$PY")/torchrun"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
cd "$ROOT"
rm -rf "$OUT/features" "$OUT/train"  # generated outputs of a previous run; the scenes are regenerated too

echo "== 1/5 synthetic scenes (MOTChallenge layout) and held-out validation pairs"
"$PY" scripts/make_roi_demo_data.py --out "$OUT" --train_scenes 2 --frames 150 --objects 8 --val_pairs 15

echo "== 2/5 ROI features [N, 512, 10, 10] from YOLOv7's SPPCSPC map (ground-truth boxes, every 5th frame)"
"$PY" scripts/extract_roi_features.py --source "$OUT"/scenes/SYN-* --boxes gt --img_size 320 --frame_step 5 \
    --output "$OUT/features"

echo "== 3/5 training with torchrun --nproc_per_node=2 (gloo on CPU, NCCL on GPU)"
"$TORCHRUN" --standalone --nproc_per_node=2 main_train.py --data "$OUT/features" --output_dir "$OUT/train" \
    --epochs 10 --batch_size 64 --warmup_epochs 2 --lr 1e-3 --min_lr 1e-4 --save_interval 5 --workers 0

echo "== 4/5 val.py with the trained encoder and with an untrained one"
"$PY" val.py --data "$OUT/val" --checkpoint "$OUT/train/checkpoints/last.pth" --output "$OUT/val_trained.json"
"$PY" val.py --data "$OUT/val" --checkpoint "$OUT/train/checkpoints/last.pth" --untrained \
    --output "$OUT/val_untrained.json"

echo "== 5/5 trained vs untrained (mean over validation pairs)"
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
trained, untrained = (json.loads((out / f"val_{name}.json").read_text())["mean"] for name in ("trained", "untrained"))
print(f"{'metric':<14}{'untrained':>12}{'trained':>12}")
for key, name in [("top1", "Top-1"), ("mean_rank", "Mean Rank"), ("mrr", "MRR"), ("recall@5", "Recall@5"),
                  ("recall@10", "Recall@10"), ("num_queries", "Num. Queries"), ("num_valid", "Num. Valid")]:
    print(f"{name:<14}{untrained[key]:>12.4f}{trained[key]:>12.4f}")
print(f"curves: {out / 'train' / 'curves.png'}   TensorBoard: tensorboard --logdir {out / 'train' / 'tensorboard'}")
PYEOF
