#!/usr/bin/env bash
# Render nginx/*.conf.in for a domain and a certbot lineage into OUTDIR:
#   deploy/render-nginx.sh --domain example.com --cert-name example.com OUTDIR
# Settings with defaults for production, overridable from the environment
# (the test runs nginx on high ports): HTTPS_PORT (443), HTTP_PORT (80),
# TLS_INTERNAL (127.0.0.1:8444, nginx's own TLS servers behind the SNI
# router), FW_UPSTREAM (127.0.0.1:8443), DASHBOARD_UPSTREAM
# (127.0.0.1:8000), MAX_BODY (65m, fw.max_image_bytes' 64 MiB and the
# form), CERT_DIR (/etc/letsencrypt/live/CERT_NAME), DOCS_ROOT, APEX_ROOT,
# ACME_ROOT, IPV6 (on).
#
# --acme-only renders what a host without a certificate yet can load: the
# port-80 server (certbot's webroot challenges, redirects) and an empty
# stream file. deploy/setup-host.sh starts nginx on it to get the first
# certificate by webroot, so renewals run the same way while nginx holds
# port 80.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
domain="" cert_name="" out="" acme_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --domain) domain=$2; shift 2 ;;
    --cert-name) cert_name=$2; shift 2 ;;
    --acme-only) acme_only=1; shift ;;
    -*) echo "render-nginx: unknown option $1" >&2; exit 2 ;;
    *) out=$1; shift ;;
  esac
done
if [ -z "$domain" ] || [ -z "$cert_name" ] || [ -z "$out" ]; then
  echo "usage: render-nginx.sh --domain DOMAIN --cert-name NAME OUTDIR" >&2
  exit 2
fi
# A domain is letters, digits, dots and hyphens: nothing that could end a
# directive or start a new one in the rendered file.
if ! [[ "$domain" =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]]; then
  echo "render-nginx: not a domain name: $domain" >&2
  exit 2
fi
if ! [[ "$cert_name" =~ ^[A-Za-z0-9._-]+$ ]]; then
  echo "render-nginx: not a certbot lineage name: $cert_name" >&2
  exit 2
fi

mkdir -p "$out"
for name in flownexus-stream flownexus-http; do
  sed -e "s|@DOMAIN@|${domain}|g" \
      -e "s|@HTTPS_PORT@|${HTTPS_PORT:-443}|g" \
      -e "s|@HTTP_PORT@|${HTTP_PORT:-80}|g" \
      -e "s|@TLS_INTERNAL@|${TLS_INTERNAL:-127.0.0.1:8444}|g" \
      -e "s|@FW_UPSTREAM@|${FW_UPSTREAM:-127.0.0.1:8443}|g" \
      -e "s|@DASHBOARD_UPSTREAM@|${DASHBOARD_UPSTREAM:-127.0.0.1:8000}|g" \
      -e "s|@MAX_BODY@|${MAX_BODY:-65m}|g" \
      -e "s|@CERT_DIR@|${CERT_DIR:-/etc/letsencrypt/live/${cert_name}}|g" \
      -e "s|@DOCS_ROOT@|${DOCS_ROOT:-/var/www/flownexus/docs}|g" \
      -e "s|@APEX_ROOT@|${APEX_ROOT:-/var/www/flownexus/apex}|g" \
      -e "s|@ACME_ROOT@|${ACME_ROOT:-/var/www/letsencrypt}|g" \
      "$here/nginx/$name.conf.in" > "$out/$name.conf.tmp"
  if [ "${IPV6:-on}" = off ]; then
    sed -i '/# ipv6$/d' "$out/$name.conf.tmp"
  fi
  if grep -q '@[A-Z_]*@' "$out/$name.conf.tmp"; then
    echo "render-nginx: unrendered placeholder in $name.conf" >&2
    exit 1
  fi
  if [ "$acme_only" = 1 ]; then
    # The first server block only (the file's header comment, then port 80).
    awk '/^server \{/ { seen = 1 } { print } seen && /^\}/ { exit }' "$out/$name.conf.tmp" > "$out/$name.conf.acme"
    mv "$out/$name.conf.acme" "$out/$name.conf.tmp"
    if [ "$name" = flownexus-stream ]; then
      echo "# No stream servers until the certificate exists (render-nginx.sh --acme-only)." > "$out/$name.conf.tmp"
    fi
  fi
  mv "$out/$name.conf.tmp" "$out/$name.conf"
done
