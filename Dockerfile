# The activity collector: gRPC on 50051, HTTP/JSON on 8080, Prometheus metrics on 9464.
# Without ACTIVITY_CLICKHOUSE_DSN it stores into the embedded ClickHouse engine under /data.

# Build stage: the wheel with its compiled modules (the fast path and enrichment's loops, about three
# times less CPU per activity than without them), built where a C compiler is at hand.
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY core ./core
COPY collector ./collector
COPY workers ./workers
COPY clients/python/activity_client ./clients/python/activity_client
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

COPY --from=build /wheels /wheels
# The import fails the build if a compiled module is missing, instead of shipping the slow path.
RUN pip install /wheels/*.whl && rm -rf /wheels \
    && python -c "import core._fastpath, workers.enrichment._lookups"

RUN useradd --system --uid 10001 --home-dir /data --create-home collector
USER collector
WORKDIR /data

ENV ACTIVITY_LISTEN=0.0.0.0:50051 \
    ACTIVITY_HTTP_LISTEN=0.0.0.0:8080 \
    ACTIVITY_METRICS_LISTEN=0.0.0.0:9464 \
    ACTIVITY_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 50051 8080 9464

# The gRPC health service: SERVING while the store takes writes.
HEALTHCHECK --interval=10s --timeout=6s --start-period=30s --retries=3 \
    CMD ["activity-collector", "health", "--target", "127.0.0.1:50051", "--timeout", "5"]

# SIGTERM stops it gracefully within shutdown_grace_s (default 10 s; keep docker's stop timeout above it).
STOPSIGNAL SIGTERM
ENTRYPOINT ["activity-collector"]
CMD ["serve"]
