"""codeworker: Celery workers that turn code-operation requests into verified pull requests."""
