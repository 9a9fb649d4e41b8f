"""Qdrant storage for papers: an embedded qdrant-edge shard or a Qdrant server, one interface.

Nothing is re-exported here: ``papersearch.index.query`` (the request types the client uses)
must not load the storage engine.
"""
