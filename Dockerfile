# syntax=docker/dockerfile:1
# Build stage: compile wheels once, so the runtime image carries no compiler.
FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir --upgrade pip==24.3.1 wheel==0.45.1
COPY pyproject.toml README.md ./
COPY fastproxy ./fastproxy
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FASTPROXY_HOST=0.0.0.0 \
    FASTPROXY_PORT=8000 \
    FASTPROXY_DATABASE_URL=sqlite:////data/fastproxy.db
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/* && rm -rf /wheels \
    && useradd --system --uid 10001 --home-dir /data --create-home fastproxy
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('FASTPROXY_PORT','8000'), timeout=2)"]
ENTRYPOINT ["fastproxy"]
CMD ["serve"]
