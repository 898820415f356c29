# One image for the operator and the runtime: `cachedapi operator` or `cachedapi runtime --role ...`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY cachedapi ./cachedapi
RUN pip install . && rm -rf /src

WORKDIR /
# A numeric user, so that runAsNonRoot can be verified (the restricted Pod Security Standard).
USER 65532:65532
ENTRYPOINT ["cachedapi"]
CMD ["operator"]
