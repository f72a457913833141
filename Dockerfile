# syntax=docker/dockerfile:1
# One image for producer, trainer and scorer: the three services share every dependency (the library,
# numpy, scikit-learn, torch, confluent-kafka), so one image is built once, cached once and pulled once,
# and each service is just a different command. Two variants, chosen with the TORCH_VARIANT build arg:
#   cpu (default): torch's CPU-only wheels, a few hundred MB, runs anywhere;
#   gpu:           torch's default Linux wheels from PyPI, which bundle the CUDA runtime (nvidia-* wheels);
#                  the host needs only the NVIDIA driver and the container toolkit (docker-compose.gpu.yml).
ARG PYTHON_VERSION=3.11
ARG TORCH_VARIANT=cpu

FROM python:${PYTHON_VERSION}-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 anomstream
WORKDIR /app
# the pins live in pyproject.toml only; each stage reads them from there so the image cannot drift from it
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
    > /tmp/requirements.txt \
 && grep '^torch==' /tmp/requirements.txt > /tmp/torch.txt

FROM base AS torch-cpu
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_CPU_INDEX}" -r /tmp/torch.txt

FROM base AS torch-gpu
RUN pip install -r /tmp/torch.txt

# BuildKit builds only the torch stage that TORCH_VARIANT names
FROM torch-${TORCH_VARIANT} AS app
# dependencies before the source: editing the code does not reinstall them
RUN pip install -r /tmp/requirements.txt
COPY . .
# editable, so the layout is the checkout's (schemas/ beside the package), exactly as in local mode
RUN pip install --no-deps -e . \
 && mkdir -p /models \
 && chown anomstream:anomstream /models
USER anomstream
# a new named volume takes its owner from /models here, so the unprivileged trainer can write to it
VOLUME ["/models"]
CMD ["anomstream", "--help"]
