"""Query/document encoder: the runtime class and its Serve deployment."""
