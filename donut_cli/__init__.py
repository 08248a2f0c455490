"""The `donut` command, and `donut up`: the whole stack composed on one machine."""
