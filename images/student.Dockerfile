# crossdistill student: PyTorch with CUDA, for GPU node pools. torch's Linux wheels on PyPI carry the
# CUDA runtime (nvidia-* wheels), so the node only needs the NVIDIA driver (GKE installs it).
# Build from the repository root: docker build -f images/student.Dockerfile -t <image_for("student")> .

FROM python:3.11.13-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11.13-slim-bookworm
ARG TORCH=torch==2.13.0
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp CROSSDISTILL_IMAGES_FILE=/opt/crossdistill/images.yaml
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin crossdistill
# The version is pinned by the build ARG above / by pyproject.toml ranges, which hadolint cannot see;
# a separate layer on purpose: the heavy framework changes far less often than crossdistill.
# hadolint ignore=DL3013,DL3059
RUN pip install --no-cache-dir "${TORCH}"
COPY --from=wheel /wheels /wheels
# Dependencies come with the ranges in crossdistill's wheel metadata (pyproject.toml).
# hadolint ignore=DL3013
RUN for w in /wheels/crossdistill-*.whl; do pip install --no-cache-dir "${w}[student,kfp,cloud]"; done \
    && rm -rf /wheels
COPY images/images.yaml /opt/crossdistill/images.yaml
USER 10001
# Batch work (KFP steps), not a server: nothing to probe.
HEALTHCHECK NONE
ENTRYPOINT ["crossdistill"]
