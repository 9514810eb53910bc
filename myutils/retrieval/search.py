"""Exact top-k search by inner product (cosine for L2-normalised embeddings), with two backends.

- ``torch``: a float32 ``torch.mm`` into a reused block of queries × gallery similarities, whose top k
  come from group maxima (:func:`block_top_k`);
- ``faiss``: faiss's exact ``knn`` (the kernel of ``IndexFlatIP``), which blocks both dimensions.

Both return the same neighbours; scores differ by float32 rounding only, so exact ties may come in
another order. ``auto`` on the CPU, when faiss is installed, takes it for galleries of
:data:`FAISS_MIN_GALLERY` items or more; a smaller search of :data:`PROBE_MIN_MACS` or more runs its
first :data:`PROBE_QUERIES` queries through each backend, timed, and the rest, and later searches of
that shape class in this process, through the faster (faiss-cpu wheels bundle an OpenBLAS whose
kernels are a little faster than torch's matmul on the CPUs it knows and 3-4× slower on newer ones).
torch otherwise. Pass ``backend="torch"`` for results that do not depend on a timing.
"""

from __future__ import annotations

import time

import torch

from myutils.cli import InputError

BACKENDS = ("auto", "torch", "faiss")
FAISS_MIN_GALLERY = 250_000  # from here on a block is MIN_BLOCK_ROWS rows of 64+ MB: faiss tiles both ways
SIMILARITY_BLOCK_ELEMENTS = 1 << 22  # 16 MiB of float32 similarities a block (faster than 64 MiB ones)
MIN_BLOCK_ROWS = 64  # a thinner matmul is slow whatever the gallery
TOP_K_GROUP = 64  # columns per group in block_top_k
PROBE_MIN_MACS = 1 << 30  # smaller searches (~20 ms) take torch rather than time the backends
# queries timed through each backend (faiss's knn is ~10× slower a query below ~200: too few to time it);
# searches of fewer than 3× as many take torch
PROBE_QUERIES = 256


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def search_backend(queries: torch.Tensor, gallery: torch.Tensor, backend: str = "auto") -> str:
    """The backend :func:`top_k_search` uses: ``"torch"``, ``"faiss"``, or ``"timed"`` (both, timed, then the faster)."""
    if backend not in BACKENDS:
        raise InputError(f"search backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend
    if not queries.device.type == gallery.device.type == "cpu" or not faiss_available():
        return "torch"
    if gallery.shape[0] >= FAISS_MIN_GALLERY:
        return "faiss"
    if queries.shape[0] < 3 * PROBE_QUERIES or queries.shape[0] * gallery.shape[0] * gallery.shape[1] < PROBE_MIN_MACS:
        return "torch"
    return _faster_backend.get(_shape_class(gallery), "timed")


@torch.no_grad()
def top_k_search(
    queries: torch.Tensor, gallery: torch.Tensor, k: int, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` gallery items per query by inner product, best first: ``(scores [Q, k], indices [Q, k])``.

    Results are on the queries' device and carry no gradient; memory beyond the inputs is one block
    of similarities (:data:`SIMILARITY_BLOCK_ELEMENTS`, or :data:`MIN_BLOCK_ROWS` gallery rows if more).
    """
    k = min(k, gallery.shape[0])
    backend = search_backend(queries, gallery, backend)
    if backend != "timed":
        return _SEARCHES[backend](queries, gallery, k)
    parts, seconds = [], {}
    for position, name in enumerate(_SEARCHES):
        _SEARCHES[name](queries[:8], gallery, k)  # warm-up: thread pools, first-call set-up
        start = time.perf_counter()
        parts.append(_SEARCHES[name](queries[position * PROBE_QUERIES : (position + 1) * PROBE_QUERIES], gallery, k))
        seconds[name] = time.perf_counter() - start
    faster = _faster_backend[_shape_class(gallery)] = min(seconds, key=seconds.get)
    parts.append(_SEARCHES[faster](queries[len(_SEARCHES) * PROBE_QUERIES :], gallery, k))
    return torch.cat([scores for scores, _ in parts]), torch.cat([indices for _, indices in parts])


def _torch_search(queries: torch.Tensor, gallery: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    if queries.shape[0] == 0 or k == 0:
        return queries.new_empty(queries.shape[0], k), torch.empty(queries.shape[0], k, dtype=torch.long,
                                                                  device=queries.device)
    queries, gallery = queries.float(), gallery.float()
    rows = min(queries.shape[0], max(MIN_BLOCK_ROWS, SIMILARITY_BLOCK_ELEMENTS // max(1, gallery.shape[0])))
    block = torch.empty(rows, gallery.shape[0], device=queries.device)  # reused: a fresh one costs page faults
    scores, indices = [], []
    for start in range(0, queries.shape[0], rows):
        query_block = queries[start : start + rows]
        similarities = block[: query_block.shape[0]]
        torch.mm(query_block, gallery.T, out=similarities)
        block_scores, block_indices = block_top_k(similarities, k)
        scores.append(block_scores)
        indices.append(block_indices)
    return torch.cat(scores), torch.cat(indices)


def _faiss_search(queries: torch.Tensor, gallery: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    import faiss

    scores, indices = faiss.knn(_as_float32_numpy(queries), _as_float32_numpy(gallery), k,
                                metric=faiss.METRIC_INNER_PRODUCT)
    return torch.from_numpy(scores), torch.from_numpy(indices)


_SEARCHES = {"torch": _torch_search, "faiss": _faiss_search}
# the faster backend per shape class, found by the first "timed" search of that class in this process
_faster_backend: dict[tuple[int, int, int], str] = {}


def _shape_class(gallery: torch.Tensor) -> tuple[int, int, int]:
    """Width, torch threads and gallery size to a power of two: what decides which backend is faster."""
    return gallery.shape[1], torch.get_num_threads(), gallery.shape[0].bit_length()


def block_top_k(similarities: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``similarities.topk(k, dim=1)`` (ties aside) from the maxima of groups of :data:`TOP_K_GROUP` columns.

    Each of a row's k best values lies in one of the k groups with the largest maxima (a group outside
    them has k larger maxima elsewhere), so one pass of ``amax`` and a ``topk`` over k groups replace the
    ``topk`` over the whole row, which costs ~2× more on the CPU for small k.
    """
    n_rows, n_columns = similarities.shape
    n_groups = n_columns // TOP_K_GROUP
    if n_groups < 4 * k:  # too few groups to leave any out
        return similarities.topk(k, dim=1)
    grouped_columns = n_groups * TOP_K_GROUP
    groups = similarities[:, :grouped_columns].unflatten(1, (n_groups, TOP_K_GROUP))
    best_groups = groups.amax(dim=2).topk(k, dim=1).indices
    offsets = torch.arange(TOP_K_GROUP, device=similarities.device)
    candidates = groups.gather(1, best_groups[:, :, None].expand(-1, -1, TOP_K_GROUP)).flatten(1)
    columns = (best_groups[:, :, None] * TOP_K_GROUP + offsets).flatten(1)
    if grouped_columns < n_columns:  # the last partial group: every column is a candidate
        tail = torch.arange(grouped_columns, n_columns, device=similarities.device).expand(n_rows, -1)
        candidates = torch.cat([candidates, similarities[:, grouped_columns:]], dim=1)
        columns = torch.cat([columns, tail], dim=1)
    scores, picked = candidates.topk(k, dim=1)
    return scores, columns.gather(1, picked)


def _as_float32_numpy(tensor: torch.Tensor):
    return tensor.detach().float().cpu().contiguous().numpy()
