"""Training machinery shared by every trainer: checkpoints, seeding, schedules, mixed precision, torchrun, logs."""
