"""The YOLOv7 detector: network, weights loading, letterbox, decoding and NMS, frame sources."""
