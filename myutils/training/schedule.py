"""Learning-rate schedules stepped once per optimizer step."""

from __future__ import annotations

import math

import torch


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_factor: float = 0.0) -> float:
    """Multiplier of the base lr: linear warm-up from ~0 to 1, then cosine down to ``min_factor``."""
    return WarmupCosine(warmup_steps, total_steps, min_factor)(step)


class WarmupCosine:
    """:func:`warmup_cosine_factor` as a ``LambdaLR`` function whose plan can be extended on resume.

    Its attributes are plain numbers, so ``LambdaLR.state_dict()`` stores the plan (and
    ``load_state_dict`` restores it). :meth:`extend` moves the end of the schedule without a jump:
    the remaining part of the cosine is stretched (or compressed) from the current step to the new
    end, so the factor at the current step is unchanged and keeps falling smoothly to ``min_factor``.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_factor: float = 0.0):
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_factor = min_factor
        self.knot_step = warmup_steps  # the cosine runs from (knot_step, knot_progress) to (total_steps, 1)
        self.knot_progress = 0.0

    def progress(self, step: int) -> float:
        """How far along the cosine ``step`` is, in [0, 1]."""
        span = max(1, self.total_steps - self.knot_step)
        return min(1.0, self.knot_progress + (1.0 - self.knot_progress) * max(0, step - self.knot_step) / span)

    def __call__(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * self.progress(step)))

    def extend(self, step: int, total_steps: int) -> None:
        """End the schedule at ``total_steps`` instead, continuing from ``step`` without a jump."""
        if step > self.knot_step:
            self.knot_progress, self.knot_step = self.progress(step), step
        self.total_steps = total_steps


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_factor: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over :class:`WarmupCosine`; its ``state_dict`` is plain data (the plan included)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_factor))
