# The connector's image: one image for the Procfile's three processes (web, worker, scheduler).
# Run it with the process name as the command (`docker run IMAGE worker`) or with the Procfile's
# command itself (compose.yaml); deploy/entrypoint.sh maps one to the other. docs/deploy.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package needs to build; .dockerignore keeps secrets, .venv and local data out.
WORKDIR /build
COPY pyproject.toml README.md ./
COPY connector ./connector
COPY adapters ./adapters
COPY rules ./rules
# The worker's hot modules compiled with mypyc (rules/compiled.py); the compiler and mypy leave
# the image afterwards (the compiled modules need neither).
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install . 'mypy>=1.10' \
    && connector compile \
    && pip uninstall -y mypy \
    && apt-get purge -y --auto-remove gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* /build

COPY Procfile /srv/connector/Procfile
COPY deploy/entrypoint.sh /usr/local/bin/connector-entrypoint
RUN chmod 0755 /usr/local/bin/connector-entrypoint \
    && useradd --system --uid 10001 --user-group --home-dir /srv/connector --shell /usr/sbin/nologin connector \
    && mkdir -p /config/accounts /srv/connector/data \
    && chown connector:connector /srv/connector/data

WORKDIR /srv/connector
# Account files are mounted read-only at /config/accounts; the data directory is only used by
# `connector dev`, never in production, and is set so that nothing looks in the working directory.
ENV CONNECTOR_CONFIG_DIR=/config/accounts \
    CONNECTOR_DATA_DIR=/srv/connector/data \
    PORT=8000

USER connector
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/connector-entrypoint"]
CMD ["web"]
