"""The Celery side of farm: configuration (app.py) and thin tasks (tasks.py) that call into farm.cluster.coordinator."""
