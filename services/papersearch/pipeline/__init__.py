"""The search pipeline: validate -> encode -> retrieve (hybrid) -> rerank, with timings."""
