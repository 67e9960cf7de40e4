"""Benchmarks of eventbus against raw Celery and celery-pubsub (not tests).

Kept import-free: ``bench.raw_app`` must load without eventbus or pydantic.
"""
