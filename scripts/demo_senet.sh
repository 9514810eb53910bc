#!/usr/bin/env bash
# SENet face-feature mapper demo (make demo-senet): generate pose-distorted face features (the "mixing"
# family: pose-dependent rotations of the identity dimensions), train the dual-branch SENet with the
# frontal target, map the video features with the best model, export it to ONNX (parity-checked).
# Usage: scripts/demo_senet.sh OUT_DIR   (a few minutes on 2 shared CPU cores; writes only under OUT_DIR)
set -euo pipefail
OUT_DIR=${1:?usage: scripts/demo_senet.sh OUT_DIR}
PYTHON=${PYTHON:-.venv/bin/python}
# This small network trains several times faster on one thread than on two contended ones.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

"$PYTHON" scripts/make_face_feature_data.py --out "$OUT_DIR/data" --overwrite --family mixing \
    --num_persons 1000 --fronts_per_person 1 --frames_per_person 4 --feature_dim 512
# A fresh run each time: the previous demo's checkpoints and TensorBoard events are replaced.
rm -rf "$OUT_DIR/checkpoints" "$OUT_DIR/logs"
"$PYTHON" train_transformer3D/triplet/train_senet_triplet.py --data_dir "$OUT_DIR/data" \
    --image_dim 512 --hidden_dim 512 --epochs 15 --batch_size 64 --lr 1e-3 --num_workers 0 \
    --save_interval 5 --save_dir "$OUT_DIR/checkpoints" --log_dir "$OUT_DIR/logs"
"$PYTHON" scripts/map_face_features.py --model "$OUT_DIR/checkpoints/best_model.pth" \
    --features "$OUT_DIR/data/video_feature.npy" --metadata "$OUT_DIR/data/video_metadata.json" \
    --output "$OUT_DIR/mapped_video_feature.npy"
"$PYTHON" scripts/export_onnx.py senet --checkpoint "$OUT_DIR/checkpoints/best_model.pth" \
    --output "$OUT_DIR/onnx/senet_mapper"
echo "SENet demo done: $OUT_DIR/checkpoints (final_training_curves.png, training_history.json)," \
     "$OUT_DIR/mapped_video_feature.npy, $OUT_DIR/onnx/senet_mapper.onnx; TensorBoard: $OUT_DIR/logs"
