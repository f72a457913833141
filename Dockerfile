# syntax=docker/dockerfile:1
# One image for producer, trainer and scorer: the three services share every dependency (the library,
# numpy, scikit-learn, torch, confluent-kafka), so one image is built once, cached once and pulled once,
# and each service is just a different command (docker-compose.yml). Two variants, by build arg:
#   TORCH_VARIANT=cpu (default): torch's CPU-only wheels, a few hundred MB, runs anywhere;
#   TORCH_VARIANT=gpu:           torch's default Linux wheels from PyPI, which bundle the CUDA runtime
#                                (nvidia-* wheels, several GB); the host needs only the NVIDIA driver and
#                                the container toolkit (docker-compose.gpu.yml).
ARG PYTHON_VERSION=3.11
ARG TORCH_VARIANT=cpu

FROM python:${PYTHON_VERSION}-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --gid 10001 anomstream && useradd --create-home --uid 10001 --gid 10001 anomstream
WORKDIR /app

# The pins live in pyproject.toml only. Extracted here so that each later layer is keyed on the pins it
# uses: editing another dependency does not re-download torch.
FROM base AS pins
COPY pyproject.toml ./
RUN mkdir /pins \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
    > /pins/requirements.txt \
 && grep '^torch==' /pins/requirements.txt > /pins/torch.txt

FROM base AS torch-cpu
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
COPY --from=pins /pins/torch.txt /tmp/torch.txt
RUN pip install --no-cache-dir --index-url "${TORCH_CPU_INDEX}" -r /tmp/torch.txt

FROM base AS torch-gpu
COPY --from=pins /pins/torch.txt /tmp/torch.txt
RUN pip install --no-cache-dir -r /tmp/torch.txt

# BuildKit builds only the torch stage that TORCH_VARIANT names (a stage, so it has no tag to pin).
# hadolint ignore=DL3006
FROM torch-${TORCH_VARIANT} AS app
WORKDIR /app
# dependencies before the source, so editing the code does not reinstall them; the torch pin is already met
COPY --from=pins /pins/requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt
COPY . .
# editable: the layout stays the checkout's (schemas/ beside the package), exactly as in local mode
RUN pip install --no-cache-dir --no-deps -e . \
 && mkdir -p /models \
 && chown anomstream:anomstream /models
USER 10001:10001
# a new named volume takes its owner from /models here, so the unprivileged trainer can write to it
VOLUME ["/models"]
CMD ["anomstream", "--help"]
