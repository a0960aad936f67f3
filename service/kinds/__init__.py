"""Session kinds: what a session's opaque state, log and sums mean (``service.kinds.base``)."""
