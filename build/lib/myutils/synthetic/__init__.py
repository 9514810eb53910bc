"""Generated data for demos, tests and benchmarks (garments, tracking scenes, a simulated detector, toy segmentation)."""
