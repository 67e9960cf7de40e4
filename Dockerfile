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

# Dependencies and sources the package needs (see .dockerignore for the rest).
COPY pyproject.toml README.md celeryconfig.py ./
COPY eventbus/ eventbus/
COPY handlers/ handlers/

# The [flower] extra: the compose stack runs Flower from this image too.
RUN pip install ".[flower]" \
 && rm -rf build ./*.egg-info

USER eventbus

CMD ["celery", "-A", "handlers", "worker", "-l", "INFO", "-Q", "eventbus"]
