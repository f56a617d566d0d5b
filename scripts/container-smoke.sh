#!/usr/bin/env bash
# Container smoke test: builds the image and runs the compose stack under podman, trains an
# adapter over HTTP, predicts, restarts the stack, predicts again, and tears it all down.
#
#   sudo scripts/container-smoke.sh
#
# For a Debian machine without Docker: it installs podman, runc, debootstrap and curl with apt
# and podman-compose into its own venv, and builds a stand-in base image with debootstrap when
# no registry is reachable. Every step is skipped when already done, so a second run reuses
# the tools, the base image and the cached image layers. Settings (environment):
#   SMOKE_PORT         host port of the API (18000)
#   SMOKE_BASE_IMAGE   base image; a localhost/ name is built with debootstrap when missing,
#                      anything else is pulled (localhost/adapter-serve-smoke-base:bookworm)
#   SMOKE_TOOLS_DIR    where the podman-compose venv lives (~/.cache/adapter-serve-smoke)
#   SMOKE_KEEP_IMAGES  0 removes the built image at the end as well (1)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PROJECT=adapter-serve-smoke
SERVICE=api
ADAPTER=smoke-sentiment
PORT=${SMOKE_PORT:-18000}
BASE_URL=http://127.0.0.1:${PORT}
BASE_IMAGE=${SMOKE_BASE_IMAGE:-localhost/adapter-serve-smoke-base:bookworm}
TOOLS_DIR=${SMOKE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/adapter-serve-smoke}
KEEP_IMAGES=${SMOKE_KEEP_IMAGES:-1}
PODMAN_COMPOSE_VERSION=1.6.0
TORCH_VERSION=$(sed -n 's/^ARG TORCH_VERSION=//p' Dockerfile)
# A self-ignoring directory in the build context: the Dockerfile can only bind-mount wheels
# from inside the context, and a symlink out of it is not followed.
WHEEL_DIR=.smoke-wheels
READY_TIMEOUT_S=300
JOB_TIMEOUT_S=600

STARTED=$(date +%s.%N)
WORK=$(mktemp -d)
COMPOSE=()

log() { echo "=== $*"; }
die() { echo "FAILED: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
# json EXPR: evaluates EXPR (Python, the parsed stdin JSON is `d`) and prints the result.
json() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }

cleanup() {
    local rc=$?
    set +e
    if ((${#COMPOSE[@]})); then
        if ((rc != 0)); then
            log "logs of the failed run"
            "${COMPOSE[@]}" logs --tail 80 "$SERVICE"
        fi
        log "teardown"
        "${COMPOSE[@]}" down --volumes >/dev/null 2>&1
        podman volume rm --force "${PROJECT}_adapters" >/dev/null 2>&1
        if [[ $KEEP_IMAGES == 0 ]]; then
            podman image rm --force "adapter-serve:${IMAGE_TAG:-smoke}" >/dev/null 2>&1
        fi
    fi
    rm -rf "$WORK" "$WHEEL_DIR"
    ((rc == 0)) || echo "container smoke test FAILED (exit ${rc})" >&2
    exit "$rc"
}
trap cleanup EXIT

# --- tools -------------------------------------------------------------------------------
install_tools() {
    [[ $(id -u) == 0 ]] || die "run as root (apt, debootstrap and rootful podman need it)"
    local missing=() cmd
    for cmd in podman runc debootstrap curl; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    if ((${#missing[@]})); then
        log "apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q "${missing[@]}" \
            || { apt-get update -q && apt-get install -y -q "${missing[@]}"; }
    fi
    if [[ ! -x $TOOLS_DIR/venv/bin/podman-compose ]] \
        || [[ $("$TOOLS_DIR/venv/bin/podman-compose" --version 2>/dev/null) \
            != *"podman-compose version ${PODMAN_COMPOSE_VERSION}"* ]]; then
        log "podman-compose ${PODMAN_COMPOSE_VERSION} into ${TOOLS_DIR}/venv"
        python3 -m venv "$TOOLS_DIR/venv"
        "$TOOLS_DIR/venv/bin/pip" install -q "podman-compose==${PODMAN_COMPOSE_VERSION}"
    fi
}

# Debian's defaults fail in a VM without systemd: setting rlimits is not permitted and there is
# no systemd cgroup manager. Kept to this run instead of editing /etc/containers.
configure_podman() {
    cat >"$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
EOF
    export CONTAINERS_CONF=$WORK/containers.conf
    # OCI images have no HEALTHCHECK; the Docker format keeps the Dockerfile's.
    export BUILDAH_FORMAT=docker
}

# --- base image --------------------------------------------------------------------------
base_image() {
    if podman image exists "$BASE_IMAGE"; then
        echo "base image ${BASE_IMAGE}: cached"
    elif [[ $BASE_IMAGE == localhost/* ]]; then
        log "base image ${BASE_IMAGE} with debootstrap (Debian bookworm, python3)"
        local root=$WORK/rootfs
        debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
            bookworm "$root" "${SMOKE_DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$WORK/debootstrap.log" \
            || { tail -20 "$WORK/debootstrap.log"; die "debootstrap"; }
        # What python:3.11-slim leaves out too: package caches, docs, man pages, locales.
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
            "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
        tar -C "$root" -c . | podman import --change 'ENV LANG=C.UTF-8' - "$BASE_IMAGE" >/dev/null
        rm -rf "$root"
    else
        podman pull "$BASE_IMAGE"
    fi
    # The Dockerfile reads pyproject.toml with tomllib.
    podman run --rm "$BASE_IMAGE" python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "${BASE_IMAGE} has no python3 >= 3.11"
}

# --- what pip needs inside the build -----------------------------------------------------
# pip_setting KEY: the values of KEY (e.g. cert, find-links) in this machine's pip configuration
# and PIP_* environment, one a line.
pip_setting() {
    python3 -m pip config list 2>/dev/null | sed -n "s/^[^=]*\.$1='\(.*\)'\$/\1/p" | tr ' ' '\n' \
        | sed 's|^file://||' | awk 'NF && !seen[$0]++'
}

# Sets BUILD_OPTS (podman build options) and exports the compose build variables.
prepare_build() {
    BUILD_OPTS=()
    local cert
    cert=$(pip_setting cert | head -1)
    if [[ -n $cert && -f $cert ]]; then
        echo "pip CA bundle: ${cert} (build secret pip_cert)"
        BUILD_OPTS+=(--secret "id=pip_cert,src=${cert}")
    fi
    # A local CPU torch wheel spares the download; it must fit the base image's Python.
    local pytag arch dir wheel=""
    pytag=$(podman run --rm "$BASE_IMAGE" python3 -c \
        'import sys; print("cp%d%d" % sys.version_info[:2])')
    arch=$(uname -m)
    rm -rf "$WHEEL_DIR"
    while read -r dir; do
        for wheel in "$dir"/torch-"${TORCH_VERSION}"+cpu-"${pytag}"-"${pytag}"-*_"${arch}".whl; do
            [[ -f $wheel ]] && break 2
        done
        wheel=""
    done < <(pip_setting find-links)
    if [[ -n $wheel ]]; then
        echo "torch wheel: ${wheel} (copied into ${WHEEL_DIR}/)"
        mkdir -p "$WHEEL_DIR"
        echo '*' >"$WHEEL_DIR/.gitignore"
        ln -f "$wheel" "$WHEEL_DIR/" 2>/dev/null || cp "$wheel" "$WHEEL_DIR/"
        export IMAGE_FIND_LINKS=$WHEEL_DIR
        # The wheel satisfies torch==X; PyPI serves everything else.
        export TORCH_INDEX_URL=${SMOKE_TORCH_INDEX_URL:-https://pypi.org/simple}
    else
        echo "torch wheel: none local, the Dockerfile's CPU index"
    fi
    export BASE_IMAGE PORT IMAGE_TAG=smoke
    # Docker and podman refuse a cpus limit above the host's cores.
    local cores
    cores=$(nproc)
    export API_CPUS=${API_CPUS:-$((cores < 2 ? cores : 2))}
}

# --- HTTP --------------------------------------------------------------------------------
# api METHOD PATH [curl options]: the response body; fails on an HTTP error, printing the body.
api() {
    local method=$1 path=$2 body
    shift 2
    if ! body=$(curl -sS --fail-with-body --max-time 60 -X "$method" \
        -H 'Content-Type: application/json' "$@" "${BASE_URL}${path}"); then
        echo "${method} ${path}: ${body}" >&2
        return 1
    fi
    printf '%s\n' "$body"
}

# wait_ready: polls /readyz until 200, then prints seconds since the container started.
wait_ready() {
    local deadline=$((SECONDS + READY_TIMEOUT_S)) cid started_ms ready_ms
    cid=$(podman ps -q --filter "label=io.podman.compose.project=${PROJECT}" \
        --filter "label=com.docker.compose.service=${SERVICE}")
    [[ -n $cid ]] || die "no running ${SERVICE} container"
    until curl -sf --max-time 2 -o /dev/null "${BASE_URL}/readyz"; do
        ((SECONDS < deadline)) || die "/readyz not 200 within ${READY_TIMEOUT_S}s"
        [[ $(podman inspect --format '{{.State.Running}}' "$cid") == true ]] \
            || die "the ${SERVICE} container exited"
        sleep 0.2
    done
    ready_ms=$(date +%s%3N)
    started_ms=$(podman inspect --format '{{.State.StartedAt.UnixMilli}}' "$cid")
    awk -v a="$started_ms" -v b="$ready_ms" 'BEGIN { printf "%.1f", (b - a) / 1000 }'
}

TRAIN_BODY=$(python3 - "$ADAPTER" <<'EOF'
import json, sys
positive = ["a gripping, funny film", "warm and wonderful", "a delight from start to finish",
            "beautifully acted and moving", "the best film of the year", "clever, sharp and fun",
            "i loved every minute", "a joyful, generous story", "brilliant and touching",
            "superb writing and direction", "charming and heartfelt", "an absolute triumph",
            "great fun for the whole family", "smart, funny and sweet", "a moving masterpiece",
            "wonderful performances all round"]
negative = ["dull and far too long", "a tedious mess", "boring from start to finish",
            "badly acted and lifeless", "the worst film of the year", "clumsy, flat and dull",
            "i hated every minute", "a cynical, empty story", "awful and tiresome",
            "terrible writing and direction", "bland and forgettable", "an utter failure",
            "a waste of time and money", "stupid, slow and sour", "a painful disaster",
            "wooden performances all round"]
rows = [{"text": t, "label": "positive"} for t in positive]
rows += [{"text": t, "label": "negative"} for t in negative]
print(json.dumps({"name": sys.argv[1], "task_type": "classification", "train": rows,
                  "config": {"epochs": 2}}))
EOF
)
PREDICT_BODY='{"inputs": ["a warm, funny and moving film", "a dull, tedious waste of time"]}'

train_adapter() {
    local job status deadline=$((SECONDS + JOB_TIMEOUT_S))
    job=$(api POST /adapters -d "$TRAIN_BODY" | json 'd["job_id"]')
    echo "job ${job}"
    while :; do
        status=$(api GET "/jobs/${job}" | json 'd["status"]')
        case $status in
            succeeded) break ;;
            failed | cancelled) api GET "/jobs/${job}"; die "training job ${status}" ;;
        esac
        ((SECONDS < deadline)) || die "training job still ${status} after ${JOB_TIMEOUT_S}s"
        sleep 1
    done
    api GET "/jobs/${job}" | json '"job %s: %s, best %s" % (d["job_id"], d["status"], d["result"])'
}

# predict: the predictions' labels and scores, rounded so that two runs compare as text.
predict() {
    api POST "/predict/${ADAPTER}" -d "$PREDICT_BODY" | json \
        '" ".join("%s:%.4f" % (p["label"], p["score"]) for p in d["predictions"])'
}

# --- the run -----------------------------------------------------------------------------
main() {
    log "tools"
    install_tools
    configure_podman
    COMPOSE=("$TOOLS_DIR/venv/bin/podman-compose" -p "$PROJECT" -f docker-compose.yml)
    # A run that died before its teardown may have left the stack behind.
    "${COMPOSE[@]}" down --volumes >/dev/null 2>&1 || true
    podman volume rm --force "${PROJECT}_adapters" >/dev/null 2>&1 || true

    local t
    t=$(now)
    base_image
    local base_s
    base_s=$(since "$t")

    log "build"
    prepare_build
    t=$(now)
    local build_args=()
    # podman-compose splits this string like a shell does.
    ((${#BUILD_OPTS[@]} == 0)) || build_args=(--podman-build-args "$(printf '%q ' "${BUILD_OPTS[@]}")")
    "${COMPOSE[@]}" "${build_args[@]}" build "$SERVICE"
    local build_s image size_mb
    build_s=$(since "$t")
    image=adapter-serve:${IMAGE_TAG}
    size_mb=$(podman image inspect --format '{{.Size}}' "$image" \
        | awk '{ printf "%.0f", $1 / 1e6 }')
    # The image runs this checkout's code, not a stale cached layer.
    local code="import hashlib, pathlib, sys
root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else __import__('app').__path__[0])
h = hashlib.sha256()
for p in sorted(root.rglob('*.py')):
    h.update(str(p.relative_to(root)).encode() + b'\\0' + p.read_bytes())
print(h.hexdigest())"
    [[ $(podman run --rm "$image" python3 -c "$code") == "$(python3 -c "$code" app)" ]] \
        || die "the image's app/ differs from the checkout's"
    echo "app/ in the image equals the checkout"
    # The CPU build of torch, not PyPI's CUDA one with its GBs of nvidia-* libraries.
    podman run --rm "$image" python3 -c '
import importlib.metadata as m, torch
nvidia = [d.metadata["Name"] for d in m.distributions() if d.metadata["Name"].startswith("nvidia")]
assert torch.version.cuda is None and not nvidia, (torch.__version__, nvidia)
print("torch", torch.__version__, "(CPU)")'

    log "up"
    "${COMPOSE[@]}" up -d "$SERVICE"
    local cold_s
    cold_s=$(wait_ready)
    echo "ready ${cold_s}s after the container started"
    api GET /readyz
    # What compose asked for reached the container: limits, restart policy, healthcheck.
    podman inspect --format '{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}} {{.HostConfig.RestartPolicy.Name}} {{.Config.User}}' \
        "${PROJECT}_${SERVICE}_1" \
        | awk '{ printf "limits %g cpus, %g GiB; restart %s; user %s\n", $1 / 1e9, $2 / 2^30, $3, $4 }'
    podman healthcheck run "${PROJECT}_${SERVICE}_1" && echo "healthcheck: healthy"

    log "train ${ADAPTER}"
    train_adapter
    local before after
    before=$(predict)
    echo "prediction: ${before}"

    log "restart (down, up: a new container on the same volume)"
    "${COMPOSE[@]}" down
    "${COMPOSE[@]}" up -d "$SERVICE"
    local warm_s
    warm_s=$(wait_ready)
    echo "ready ${warm_s}s after the container started"
    api GET "/adapters/${ADAPTER}" | json '"stored: %s v%s" % (d["name"], d["version"])'
    after=$(predict)
    echo "prediction: ${after}"
    [[ $after == "$before" ]] || die "prediction changed across the restart"

    log "summary"
    echo "base image:   ${base_s}s (${BASE_IMAGE})"
    echo "build:        ${build_s}s"
    echo "image size:   ${size_mb} MB (${image})"
    echo "cold start:   ${cold_s}s (container start to /readyz 200)"
    echo "restart:      ${warm_s}s (a new container on the same volume, to /readyz 200)"
    echo "smoke total:  $(since "$STARTED")s"
    echo "container smoke test passed"
}

main "$@"
