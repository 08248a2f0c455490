"""The web gateway: the browser-facing side of donut-dagger (GUI, JSON, SSE)."""
