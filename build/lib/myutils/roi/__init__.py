"""The ROI appearance encoder: ROI features from YOLOv7 maps, the encoder, its loss, feature shards and validation."""
