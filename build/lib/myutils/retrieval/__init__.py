"""Embedding galleries and searching them: batched embedding, the gallery cache, the gradient cache, retrieval metrics."""
