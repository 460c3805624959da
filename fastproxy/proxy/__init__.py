"""The request path: the route table, the hot path (`handler.proxy`) and its parts."""
