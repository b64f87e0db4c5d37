# syntax=docker/dockerfile:1
# imagesvc: build wheels in one stage, run as a non-root user on a slim base in the other.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY alembic ./alembic
# Every dependency ships manylinux wheels, so no compiler is needed even here; the install
# goes into a virtualenv that the runtime stage copies as a whole. pi-heif (HEIC decoding)
# is one of them: its wheel bundles libheif and libde265. The last line fails the build if
# the imaging stack (Pillow + the HEIF opener) cannot load on this base.
RUN python -m venv /opt/imagesvc \
 && /opt/imagesvc/bin/pip install --upgrade pip \
 && /opt/imagesvc/bin/pip install . \
 && /opt/imagesvc/bin/python -c "import imagesvc.imaging.render; from PIL import Image; assert 'HEIF' in Image.OPEN"

FROM python:${PYTHON_VERSION}-slim AS runtime
ENV PATH=/opt/imagesvc/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    IMAGESVC_LOG_FORMAT=json \
    IMAGESVC_WORKERS=2
RUN groupadd --system imagesvc \
 && useradd --system --gid imagesvc --home-dir /var/lib/imagesvc --create-home imagesvc
COPY --from=build /opt/imagesvc /opt/imagesvc
USER imagesvc
WORKDIR /var/lib/imagesvc
EXPOSE 8000
# /healthz touches nothing but the process; python is the only client in a slim image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
# Workers: IMAGESVC_WORKERS (default 2), or append `--workers N`.
ENTRYPOINT ["imagesvc", "serve", "--host", "0.0.0.0", "--port", "8000"]
