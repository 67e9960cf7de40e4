"""Integration tests: real Redis and RabbitMQ brokers and a real in-process Celery worker."""
