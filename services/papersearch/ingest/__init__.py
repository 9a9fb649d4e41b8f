"""Ingestion: corpus files -> embedded papers upserted idempotently into the index."""
