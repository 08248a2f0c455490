"""Executors start and stop job attempts; `local` runs them as processes on this host."""
