"""Pose-robust face-feature mapping (seed 004)."""
