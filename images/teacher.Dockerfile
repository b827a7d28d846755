# crossdistill teacher: Keras/TensorFlow (CPU) and ONNX Runtime behind KServe's OIP v2 server.
# Build from the repository root: docker build -f images/teacher.Dockerfile -t <image_for("teacher")> .

FROM python:3.11.13-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11.13-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp CROSSDISTILL_IMAGES_FILE=/opt/crossdistill/images.yaml
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin crossdistill
COPY --from=wheel /wheels /wheels
# Dependencies come with the ranges in crossdistill's wheel metadata (pyproject.toml).
# hadolint ignore=DL3013
RUN for w in /wheels/crossdistill-*.whl; do pip install --no-cache-dir "${w}[teacher,kfp,cloud]"; done \
    && rm -rf /wheels
COPY images/images.yaml /opt/crossdistill/images.yaml
USER 10001
# KServe's defaults: REST on 8080, gRPC on 8081.
EXPOSE 8080 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/live', timeout=4)"]
ENTRYPOINT ["python", "-m", "crossdistill.teacher.server"]
