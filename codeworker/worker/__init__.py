"""The worker process: its HTTP server, health, metrics, the journal of running jobs, what the
main process does for jobs whose pool child died, and the Celery bootsteps and signals that wire
them into ``celery worker``."""
