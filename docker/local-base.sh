#!/usr/bin/env bash
# Make a base image for the metaocl Dockerfile without any registry (air-gapped sites, CI machines
# without Docker Hub): Debian bookworm + Python 3.11 from a Debian mirror, made with debootstrap.
#
#   docker/local-base.sh                      # prints the image to build FROM
#   docker build --build-arg BASE_IMAGE="$(docker/local-base.sh)" -t metaocl:latest .
#
# Two images:
#   metaocl-base:bookworm          debootstrap --variant=minbase + python3, venv, pip, ca-certificates.
#                                  Made once (about 2 minutes); kept while the image exists
#                                  (idempotent: a second call reuses it; --rebuild makes it again).
#   metaocl-base:bookworm-localca  the above plus this host's local CA certificates
#                                  (/usr/local/share/ca-certificates/*.crt), for networks that
#                                  re-sign TLS (a proxy): pip inside the build trusts them. Redone on
#                                  every call (a cached layer while the certificates are unchanged),
#                                  since a certificate may change when a machine boots. Only this
#                                  local base carries them: the published image is built FROM the
#                                  PyTorch image, where no host certificate is ever copied.
# Without local CAs the script prints metaocl-base:bookworm.
#
# Env: DEBIAN_MIRROR (default http://deb.debian.org/debian), LOCAL_CA_DIR (default
#      /usr/local/share/ca-certificates). Needs root (debootstrap), docker, debootstrap.
set -euo pipefail

BASE=metaocl-base:bookworm
BASE_CA=metaocl-base:bookworm-localca
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CA_DIR="${LOCAL_CA_DIR:-/usr/local/share/ca-certificates}"
REBUILD=0
for arg in "$@"; do
    case "$arg" in
        --rebuild) REBUILD=1 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "local-base.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

log() { echo "local-base.sh: $*" >&2; }

if [ "$REBUILD" = 1 ] || ! docker image inspect "$BASE" > /dev/null 2>&1; then
    command -v debootstrap > /dev/null || { log "debootstrap is not installed (apt-get install debootstrap)"; exit 1; }
    rootfs="$(mktemp -d /tmp/metaocl-rootfs.XXXXXX)"
    trap 'rm -rf "$rootfs"' EXIT
    log "debootstrap bookworm from $MIRROR (a few minutes)"
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$rootfs" "$MIRROR" > "$rootfs.log" 2>&1 \
        || { tail -20 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
    rm -f "$rootfs.log"
    # No package caches in the image; apt-get update fetches the lists again when needed.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$BASE" > /dev/null
    log "made $BASE"
fi

shopt -s nullglob
certs=("$CA_DIR"/*.crt)
if [ "${#certs[@]}" = 0 ]; then
    echo "$BASE"
    exit 0
fi

context="$(mktemp -d /tmp/metaocl-localca.XXXXXX)"
trap 'rm -rf "$context"' EXIT
mkdir "$context/ctx" && cp "${certs[@]}" "$context/ctx/"
cat > "$context/ctx/Dockerfile" <<EOF
FROM $BASE
COPY *.crt /usr/local/share/ca-certificates/
RUN update-ca-certificates > /dev/null
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \\
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \\
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
EOF
docker build -q -t "$BASE_CA" "$context/ctx" > /dev/null 2> "$context/build.log" \
    || { cat "$context/build.log" >&2; exit 1; }
log "made $BASE_CA (${#certs[@]} local CA certificate(s))"
echo "$BASE_CA"
