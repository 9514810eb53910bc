"""Generated data for demos, tests and benchmarks (garments, tracking scenes, a simulated detector, planted YOLOv7 weights, semi-supervised segmentation cases, face features)."""
