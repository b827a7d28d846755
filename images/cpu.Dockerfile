# crossdistill on CPU, all in one: teacher server, student training, evaluation and KFP components.
# For small clusters (manifests/overlays/cpu) and CI. Build from the repository root:
#   docker build -f images/cpu.Dockerfile -t <image_for("cpu")> .

FROM python:3.11.13-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11.13-slim-bookworm
ARG TORCH=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp CROSSDISTILL_IMAGES_FILE=/opt/crossdistill/images.yaml
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin crossdistill
# The CPU build of torch (a few hundred MB instead of several GB of CUDA libraries).
# The version is pinned by the build ARG above / by pyproject.toml ranges, which hadolint cannot see;
# a separate layer on purpose: the heavy framework changes far less often than crossdistill.
# hadolint ignore=DL3013,DL3059
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "${TORCH}"
COPY --from=wheel /wheels /wheels
# Dependencies come with the ranges in crossdistill's wheel metadata (pyproject.toml).
# hadolint ignore=DL3013
RUN for w in /wheels/crossdistill-*.whl; do pip install --no-cache-dir "${w}[all]"; done \
    && rm -rf /wheels
COPY images/images.yaml /opt/crossdistill/images.yaml
USER 10001
EXPOSE 8080 8081
HEALTHCHECK NONE
ENTRYPOINT ["crossdistill"]
