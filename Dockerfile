# The gpufleet operator image (what charts/gpufleet runs as `gpufleet operator ...`, and as
# `gpufleet dashboard ...` when the dashboard is on: the client extra brings boto3 for its artifact links).
# Build from the repository root:  docker build -t ghcr.io/gpufleet/operator:dev .
# Runs as a non-root user with a read-only root filesystem: the chart mounts an emptyDir
# for temporary files and points TMPDIR (and NUMBA_CACHE_DIR, for the placer's compiled code) at it.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY worker-images/runtime ./worker-images/runtime
RUN python -m venv /opt/gpufleet \
 && /opt/gpufleet/bin/pip install --no-cache-dir ".[operator,client]"

FROM python:3.11-slim
COPY --from=build /opt/gpufleet /opt/gpufleet
ENV PATH=/opt/gpufleet/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["gpufleet"]
CMD ["operator", "--help"]
