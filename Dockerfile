# One image for the operator and the runtime: `cachedapi operator` or `cachedapi runtime --role ...`.
#
# The base is Debian's bookworm-slim and Python is Debian's python3 (3.11), so the whole image
# can be rebuilt from Debian's packages and PyPI alone (the e2e suite makes the base with
# debootstrap: tests/e2e/image.py). The package goes into a virtualenv in a build stage; the
# final stage gets the virtualenv and the Python interpreter, not pip's caches or build tools.
# It holds what the pods run and nothing else: no embedded PostgreSQL or Redis (the `dev`
# extra), no test tools.
FROM docker.io/library/debian:bookworm-slim AS build
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/cachedapi
COPY pyproject.toml README.md /src/
COPY cachedapi /src/cachedapi
RUN /opt/cachedapi/bin/pip install --no-cache-dir --disable-pip-version-check /src \
    && /opt/cachedapi/bin/pip uninstall --yes pip setuptools

FROM docker.io/library/debian:bookworm-slim
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log
COPY --from=build /opt/cachedapi /opt/cachedapi
ENV PATH=/opt/cachedapi/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /
# A numeric user, so that runAsNonRoot can be verified (the restricted Pod Security Standard).
USER 65532:65532
ENTRYPOINT ["cachedapi"]
CMD ["operator"]
