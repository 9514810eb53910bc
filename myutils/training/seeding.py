"""Reproducible seeding and RNG state capture for exact resumption."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from myutils.training.distributed import all_gather_object, rank_and_world_size


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def capture_rng_state() -> dict[str, Any]:
    """All RNG states as tensors and plain data (safe for ``weights_only`` checkpoints)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def capture_rank_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG state in rank order, for a checkpoint; a collective: every rank must call it."""
    return all_gather_object(capture_rng_state())


def resume_rank_rng_states(states: list[dict[str, Any]] | dict[str, Any], fallback_seed: int, source: str) -> bool:
    """Continue this rank's random streams from :func:`capture_rank_rng_states`'s list (a single state counts as
    one process). A checkpoint of another process count cannot continue them: each rank is re-seeded with
    ``fallback_seed + rank``, rank 0 warns, and ``False`` is returned."""
    rank, world_size = rank_and_world_size()
    states = [states] if isinstance(states, dict) else states
    if len(states) == world_size:
        restore_rng_state(states[rank])
        return True
    seed_everything(fallback_seed + rank)
    if rank == 0:
        print(f"warning: {source} holds the RNG state of {len(states)} process(es), this run has {world_size}: "
              "random streams re-seeded, the run does not repeat exactly")
    return False


def worker_seed(base_seed: int, worker_id: int, rank: int = 0) -> int:
    """A distinct, deterministic seed for one DataLoader worker on one rank."""
    return (base_seed * 1_000_003 + rank * 1_009 + worker_id) % 2**31
