"""streamed-job: runs one donut-dagger job attempt and streams everything it prints.

The same library runs inside each Kubernetes job (the `streamed-job` command) and
in-process in dagger's local executor, so both behave alike.
"""
