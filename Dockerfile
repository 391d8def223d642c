# One image for every poolq process. The API imports no torch; the workers do.
FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /srv/poolq
# torch first, on its own layer: it is the big one (a CUDA build on x86_64).
RUN pip install "torch>=2.4,<3"
COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
COPY models ./models
COPY migrations ./migrations
RUN pip install ".[engine]"
RUN useradd --create-home poolq && mkdir -p /var/lib/poolq /models && chown poolq /var/lib/poolq /models
USER poolq
EXPOSE 8000 5555
CMD ["poolq", "api", "--host", "0.0.0.0", "--port", "8000"]
