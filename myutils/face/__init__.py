"""Pose-robust face-feature mapping (SENet, seed 004): feature-folder data, mappers, losses, trainer, inference, export."""
