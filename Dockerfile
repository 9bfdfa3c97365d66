# syntax=docker/dockerfile:1
# signing-gateway: build wheels in one stage, install them into a virtualenv in a slim final stage that has no
# compiler, no pip inside the venv and no source tree, and run as an unprivileged user.
#
#   docker build -t signing-gateway .
#   docker run --env-file gateway.env -p 8080:8080 signing-gateway            # configured by GATEWAY_* variables
#   docker run -v $PWD/gateway.toml:/etc/signing-gateway/gateway.toml:ro signing-gateway \
#       serve --config /etc/signing-gateway/gateway.toml                     # or by a file (the variables still win)
#
# The install steps live in deploy/docker/install.sh, which tests/e2e/test_deploy_files.py runs too.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md /src/
COPY gateway /src/gateway
RUN --mount=type=bind,source=deploy/docker/install.sh,target=/usr/local/bin/install-signing-gateway \
    --mount=type=cache,target=/root/.cache/pip \
    sh /usr/local/bin/install-signing-gateway wheels /src /wheels

FROM ${PYTHON_IMAGE}
# Wheels and script are mounted for this one step only, so neither stays in a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,source=deploy/docker/install.sh,target=/usr/local/bin/install-signing-gateway \
    PIP_NO_CACHE_DIR=1 sh /usr/local/bin/install-signing-gateway venv /wheels /opt/signing-gateway \
    && groupadd --system --gid 10001 signing-gateway \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin signing-gateway

ENV PATH=/opt/signing-gateway/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_SERVER_LISTEN=0.0.0.0:8080

USER 10001:10001
EXPOSE 8080

# Liveness of this process only (no upstream or S3 call); readiness is /_gateway/readyz, for the load balancer.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('GATEWAY_SERVER_LISTEN', ':8080').rpartition(':')[2]; urllib.request.urlopen('http://127.0.0.1:' + port + '/_gateway/healthz', timeout=4)"]

# On SIGTERM the gateway stops accepting and lets in-flight requests finish within
# server.shutdown_grace_seconds: give `docker stop -t` / stop_grace_period at least that long.
STOPSIGNAL SIGTERM
ENTRYPOINT ["signing-gateway"]
CMD ["serve"]
