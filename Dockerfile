# Image for the eventbus example app: the worker, Flower and `eventbus demo`
# of docker-compose.yml (`celery -A handlers worker` by default).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user: handlers have no business running as root (and Celery
# warns about a worker that does).
RUN groupadd --system --gid 10001 eventbus \
 && useradd --system --uid 10001 --gid eventbus --home-dir /app --no-create-home \
            --shell /usr/sbin/nologin eventbus

WORKDIR /app

# The package's sources, and the example app: handlers/ and celeryconfig.py are
# not in the package (its wheel holds eventbus alone); celery and eventbus find
# them in the working directory, /app (see .dockerignore for the rest).
COPY pyproject.toml README.md celeryconfig.py ./
COPY eventbus/ eventbus/
COPY handlers/ handlers/

# The [flower] extra: the compose stack runs Flower from this image too; [kafka]:
# confluent-kafka, for the Kafka profile (publishing and `eventbus kafka consume`).
RUN pip install ".[flower,kafka]" \
 && rm -rf build ./*.egg-info

# The app `eventbus dlq list` and the other commands act on (the CLI has no
# default app): the example app, like `celery -A handlers` below.
ENV EVENTBUS_APP=handlers

USER eventbus

CMD ["celery", "-A", "handlers", "worker", "-l", "INFO", "-Q", "eventbus"]
