# syntax=docker/dockerfile:1
# Image of the devicestream Faust worker (also runs `migrate` and `simulate`).
#
#   docker build -t devicestream .
#   docker run --env-file .env devicestream                      # one worker
#   docker run --env-file .env devicestream faust -A streams.app migrate
#
# Every dependency ships binary wheels for this base, so no compiler is installed.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install the package and its dependencies into a virtualenv ------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY . .
# `pip install .` reads setup.cfg (install_requires). aiokafka's `snappy` extra adds
# cramjam: without it a consumer cannot decompress snappy batches (the broker's
# compression.type and the producers' default), and the worker would fail on the first one.
RUN pip install . "aiokafka[snappy]==0.14.0"

# --- runtime: the virtualenv and an unprivileged user, nothing else ----------------------
FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --system --gid 10001 devicestream \
 && useradd --system --uid 10001 --gid devicestream --no-log-init \
        --home-dir /var/lib/devicestream --create-home --shell /usr/sbin/nologin devicestream
COPY --from=build /opt/venv /opt/venv
USER devicestream:devicestream
# Faust keeps its data directory (devicestream-data/) in the working directory.
WORKDIR /var/lib/devicestream
EXPOSE 6066
CMD ["faust", "-A", "streams.app", "worker", "-l", "info"]
