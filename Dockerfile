# GhostLM Bots — CPU image. Build: docker build -t ghostbot .
# Run:   docker run --env-file .env -e HTTP_API_KEY=<long random secret> -v ghostbot-data:/app/data \
#            -p 127.0.0.1:8080:8080 ghostbot
# Inside the container the HTTP server binds 0.0.0.0 (so the published port reaches it), and serving on a
# non-loopback address without HTTP_API_KEY is refused at start: set the key (it guards everything but /healthz).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HTTP_HOST=0.0.0.0

WORKDIR /app

# CPU-only torch first, so the resolver never pulls the multi-GB CUDA wheels.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

COPY pyproject.toml README.md ./
COPY ghostlm ghostlm
COPY core core
COPY storage storage
COPY bots bots
RUN pip install .

RUN useradd --create-home --uid 10001 ghost && mkdir -p /app/data && chown ghost:ghost /app/data
USER ghost

VOLUME ["/app/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz').status == 200 else 1)"

# Builds the knowledge packs into /app/data on first start, then serves every configured platform.
CMD ["ghostbot", "run"]
