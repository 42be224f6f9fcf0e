#!/usr/bin/env bash
# Deploy the checked-out revision on this host: build the image, install the
# Quadlet unit, restart, and wait until the server reports healthy.
# Run by CI over SSH from the repository root:  deploy/deploy.sh
set -euo pipefail

cd "$(dirname "$0")/.."
revision=$(git rev-parse --short HEAD)
unit_dir=${XDG_CONFIG_HOME:-$HOME/.config}/containers/systemd
env_file=${XDG_CONFIG_HOME:-$HOME/.config}/flownexus/flownexus.env

# Site settings live on the host, not in the image (nothing domain-specific
# at build time); the dashboard's public URL is required in production.
if ! grep -q '^FLOWNEXUS_HTTP_PUBLIC_URL=https://' "${env_file}" 2>/dev/null; then
  echo "${env_file} must set FLOWNEXUS_HTTP_PUBLIC_URL=https://dashboard.<domain>" >&2
  exit 1
fi

echo "building flownexus ${revision}"
podman build --tag "localhost/flownexus:${revision}" --file deploy/Containerfile .
podman tag "localhost/flownexus:${revision}" localhost/flownexus:latest

install -d "${unit_dir}"
install -m 0644 quadlet/flownexus.container "${unit_dir}/flownexus.container"
systemctl --user daemon-reload
systemctl --user restart flownexus.service

# Type=notify: `restart` returns once READY=1 arrived; confirm it answers.
for _ in $(seq 1 30); do
  if podman exec flownexus flownexus healthcheck; then
    echo "flownexus ${revision} is up"
    exit 0
  fi
  sleep 1
done
echo "flownexus ${revision} did not become healthy" >&2
journalctl --user -u flownexus.service -n 50 --no-pager >&2 || true
exit 1
