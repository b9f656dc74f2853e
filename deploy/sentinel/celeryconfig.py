"""Celery settings for Flower with a Sentinel-managed broker (docker-compose.sentinel.yml): the
command line has no flag for the group's name, which workers take from CODEWORKER_REDIS_MASTER_NAME."""

broker_transport_options = {"master_name": "codeworker"}
