"""The pure core: definitions and the DAG state machine, with no I/O."""
