# migration-runner image: the runner, its pinned dependencies, and migrations/ at /migrations.
#   podman build --build-arg BASE_IMAGE=... -t migration-runner .
# BASE_IMAGE must provide python3 (3.11, matching requirements.lock) with venv; both stages use
# it, so the virtual environment's interpreter path is the same at build and run time.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# Optional CA bundle for pip behind an intercepting proxy (mounted at build time, not kept).
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY requirements.lock requirements-build.lock pyproject.toml README.md ./
COPY runner/ runner/
RUN python3 -m venv /opt/runner \
 && /opt/runner/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: \
      -r requirements.lock -r requirements-build.lock \
 && /opt/runner/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
 && /opt/runner/bin/pip uninstall --yes --quiet pip setuptools wheel \
 && python3 -m compileall -q -j 0 /opt/runner

FROM ${BASE_IMAGE}
ARG VERSION=0.2.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="migration-runner" \
      org.opencontainers.image.description="PostgreSQL schema migrations for Kubernetes init containers and Helm hook Jobs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/migration-runner"
COPY --from=build /opt/runner /opt/runner
COPY migrations/ /migrations/
ENV PATH=/opt/runner/bin:$PATH \
    MIGRATIONS_DIR=/migrations \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Numeric, so that runAsNonRoot can verify it. The runner handles SIGTERM itself as PID 1 and
# starts no child processes, so no init process is needed. No HEALTHCHECK: Jobs and init
# containers are judged by their exit code.
USER 65532:65532
ENTRYPOINT ["migration-runner"]
CMD ["migrate"]
