# crossdistill teacher on Cloud TPU: tensorflow-tpu (which brings libtpu) instead of tensorflow-cpu.
# Run it on a GKE TPU node pool (manifests/overlays/gke). Build from the repository root:
#   docker build -f images/teacher-tpu.Dockerfile -t <image_for("teacher-tpu")> .

FROM python:3.11.13-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11.13-slim-bookworm
ARG TENSORFLOW_TPU=tensorflow-tpu==2.20.0
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp CROSSDISTILL_IMAGES_FILE=/opt/crossdistill/images.yaml TPU_MIN_LOG_LEVEL=1
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin crossdistill
# The teacher extra would pull tensorflow-cpu, which clashes with tensorflow-tpu: install the teacher's
# other dependencies by hand (same ranges as pyproject.toml) and the package with the kfp and cloud extras.
# The version is pinned by the build ARG above / by pyproject.toml ranges, which hadolint cannot see;
# a separate layer on purpose: the heavy framework changes far less often than crossdistill.
# hadolint ignore=DL3013,DL3059
RUN pip install --no-cache-dir "${TENSORFLOW_TPU}" "keras>=3.3,<4" "onnxruntime>=1.18,<2" "kserve>=0.21,<0.22"
COPY --from=wheel /wheels /wheels
# Dependencies come with the ranges in crossdistill's wheel metadata (pyproject.toml).
# hadolint ignore=DL3013
RUN for w in /wheels/crossdistill-*.whl; do pip install --no-cache-dir "${w}[kfp,cloud]"; done \
    && rm -rf /wheels
COPY images/images.yaml /opt/crossdistill/images.yaml
USER 10001
EXPOSE 8080 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/live', timeout=4)"]
ENTRYPOINT ["python", "-m", "crossdistill.teacher.server"]
