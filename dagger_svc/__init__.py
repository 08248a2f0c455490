"""dagger: workflows, jobs and runs; definitions, the scheduler, executors, logs."""
