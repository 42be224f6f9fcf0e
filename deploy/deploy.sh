#!/usr/bin/env bash
# Deploy flownexus on this host as rootless Podman Quadlet units behind
# nginx. Run from a checkout (GitHub Actions runs it over SSH, see
# .github/workflows/deploy.yml) as the unprivileged user that owns the
# containers:
#
#   deploy/deploy.sh --domain example.com --cert-name example.com
#
# Each run, idempotent:
#   1. checks the prerequisites and says what is missing;
#   2. creates the directories;
#   3. on the first run only, writes the environment file and the secrets
#      (mode 0600; later runs keep them byte for byte);
#   4. copies the certbot lineage for the firmware server, renders the nginx
#      configuration, checks it with `nginx -t` and reloads nginx;
#   5. checks lingering (root's setup-host.sh enables it), so the user's
#      units run without a login;
#   6. installs the Quadlet units;
#   7. backs up the database with the running release's own
#      `flownexus backup` (SQLite VACUUM INTO, never a file copy of a live
#      WAL database), checks it with PRAGMA integrity_check, keeps the last
#      --keep-backups;
#   8. builds the image from this checkout (or pulls --image), tagged by
#      revision, restarts the unit on it and polls its health; publishes
#      the documentation the image carries as docs.DOMAIN;
#   9. if it does not become healthy: restores the pre-deploy backup, goes
#      back to the previous image, and exits non-zero.
#
# Root prepares the host once with deploy/setup-host.sh (packages, this
# user, lingering, directories, firewall, nginx, the certificate); that
# script runs `deploy.sh --setup-only` as this user at its end.
#
# Options:
#   --domain DOMAIN      the apex name: fw., dashboard. and docs. live below it
#   --cert-name NAME     certbot lineage (/etc/letsencrypt/live/NAME) covering all four names
#   --setup-only         steps 1-6 only: no backup, image or restart
#   --dry-run            print what would change, change nothing
#   --root DIR           operate on DIR as if it were / (tests): $HOME is
#                        DIR$HOME, /etc is DIR/etc, /var/www is DIR/var/www
#   --image REF          pull REF instead of building this checkout
#   --keep-backups N     backups kept (default 7)
#   --health-timeout S   seconds the new release has to report healthy (default 120)
#
# Environment: REVISION (default: the checkout's short commit id),
# NGINX_CONF (main nginx.conf for `nginx -t`, default nginx's own).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
domain="" cert_name="" setup_only=0 dry_run=0 root="" image_ref=""
keep_backups=7 health_timeout=120

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
}

die() {
  echo "deploy: $*" >&2
  exit 1
}

while [ $# -gt 0 ]; do
  case "$1" in
    --domain) domain=${2:?--domain needs a value}; shift 2 ;;
    --cert-name) cert_name=${2:?--cert-name needs a value}; shift 2 ;;
    --setup-only) setup_only=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --root) root=${2:?--root needs a directory}; shift 2 ;;
    --image) image_ref=${2:?--image needs a reference}; shift 2 ;;
    --keep-backups) keep_backups=${2:?--keep-backups needs a number}; shift 2 ;;
    --health-timeout) health_timeout=${2:?--health-timeout needs seconds}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "deploy: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
[ -n "$domain" ] || die "--domain is required (the apex name, e.g. example.com)"
[ -n "$cert_name" ] || die "--cert-name is required (the certbot lineage, e.g. example.com)"
# The same rules render-nginx.sh applies: nothing that could end a line of
# the environment file or a directive of nginx's.
[[ "$domain" =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]] || die "not a domain name: $domain"
[[ "$cert_name" =~ ^[A-Za-z0-9._-]+$ ]] || die "not a certbot lineage name: $cert_name"
[[ "$keep_backups" =~ ^[1-9][0-9]*$ ]] || die "--keep-backups must be a number >= 1"
[[ "$health_timeout" =~ ^[1-9][0-9]*$ ]] || die "--health-timeout must be a number of seconds"

if [ -n "$root" ]; then
  mkdir -p "$root"
  root=$(cd "$root" && pwd)
  home="$root$HOME"
  config_home="$home/.config"
  etc="$root/etc"
else
  home=$HOME
  config_home=${XDG_CONFIG_HOME:-$HOME/.config}
  etc=/etc
fi
unit_dir="$config_home/containers/systemd"
conf_dir="$config_home/flownexus"
env_file="$conf_dir/flownexus.env"
secrets_dir="$conf_dir/secrets"
state_dir="$home/.local/share/flownexus"
backup_dir="$state_dir/backups"
tls_dir="$state_dir/tls"
release_file="$state_dir/release"
nginx_dir=${NGINX_DIR:-$etc/nginx/flownexus}
lineage="$etc/letsencrypt/live/$cert_name"
www="$root/var/www"
volume=flownexus-data
image_repo=localhost/flownexus
user=$(id -un)
# Only nginx's check and reload need root: the deploy user runs exactly
# `sudo -n nginx -t` and `sudo -n nginx -s reload` (the sudoers line is in
# docs/operator-guide.md). Everything else it owns.
if [ -n "$root" ] || [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo -n); fi

# Side effects go through `act`: printed under --dry-run, run otherwise.
act() {
  if [ "$dry_run" = 1 ]; then
    echo "would run: $*"
  else
    "$@"
  fi
}

say() { echo "deploy: $*"; }

# --- 1. prerequisites ---------------------------------------------------
missing=()
for tool in podman systemctl loginctl nginx sqlite3 openssl git; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  die "missing: ${missing[*]}: root prepares the host once with deploy/setup-host.sh (docs/operator-guide.md)"
fi
# The keys quadlet/flownexus.container uses exist since Podman 4.6
# (Debian 13 ships 5.4; Debian 12's 4.3 has no Quadlet generator).
podman_version=$(podman version --format '{{.Client.Version}}' 2>/dev/null || echo 0)
if ! printf '4.6\n%s\n' "$podman_version" | sort -V -C; then
  die "podman $podman_version is too old: Quadlet with the keys of quadlet/flownexus.container needs 4.6 or newer (Debian 13)"
fi
# certbot's private key is root's: the deploy user reads the lineage
# itself when it may (root), else the copy deploy/certbot-hook.sh makes on
# every issue and renewal.
if [ -r "$lineage/privkey.pem" ]; then
  cert_source=$lineage
elif [ -r "$tls_dir/privkey.pem" ] && [ -r "$tls_dir/fullchain.pem" ]; then
  cert_source=""
elif [ -e "$lineage" ] || [ -n "$root" ]; then
  die "cannot read $lineage/privkey.pem, and no copy in $tls_dir: as root, run deploy/setup-host.sh (it installs the certbot hook that copies it)"
else
  die "no certificate at $lineage: as root, run deploy/setup-host.sh --domain $domain --cert-name $cert_name --email ADDRESS"
fi
[ -f "$repo/quadlet/flownexus.container" ] || die "run from a flownexus checkout ($repo has no quadlet/)"

# --- 2. directories -----------------------------------------------------
for d in "$conf_dir" "$secrets_dir" "$state_dir" "$backup_dir" "$tls_dir"; do
  act install -d -m 0700 "$d"
done
# The rendered nginx files and the web roots go to directories the deploy
# user owns (made once by root's setup-host.sh); nginx.conf includes them.
for d in "$nginx_dir" "$www/flownexus"; do
  [ -d "$d" ] && [ -w "$d" ] || [ "$dry_run" = 1 ] || [ -n "$root" ] ||
    die "$d must exist and be writable by $user: as root, run deploy/setup-host.sh"
done
act install -d -m 0755 "$unit_dir" "$nginx_dir" "$www/flownexus/docs" "$www/flownexus/apex"

# --- 3. environment file and secrets, first run only --------------------
new_secret() {
  # 32 random bytes, base64url without padding (what flownexus reads).
  local path=$1
  if [ -e "$path" ]; then return 0; fi
  if [ "$dry_run" = 1 ]; then echo "would create secret $path (mode 0600)"; return 0; fi
  (umask 077 && openssl rand -base64 32 | tr '+/' '-_' | tr -d '=\n' > "$path.tmp" && mv "$path.tmp" "$path")
}
new_secret "$secrets_dir/http-secret.key"
new_secret "$secrets_dir/fw-token.key"
if [ -e "$env_file" ]; then
  say "keeping $env_file"
  grep -q "^FLOWNEXUS_HTTP_PUBLIC_URL=https://dashboard\.$domain$" "$env_file" ||
    say "note: $env_file names another domain than $domain; edit it by hand if the domain changed"
elif [ "$dry_run" = 1 ]; then
  echo "would create $env_file (mode 0600)"
else
  (
    umask 077
    cat > "$env_file.tmp" <<EOF
# flownexus site settings, written by deploy/deploy.sh on its first run and
# never rewritten: edit by hand (docs/configuration.md lists every key).
FLOWNEXUS_MODE=production
FLOWNEXUS_HTTP_PUBLIC_URL=https://dashboard.$domain
FLOWNEXUS_HTTP_TRUSTED_PROXIES=
FLOWNEXUS_HTTP_SECRET_FILE=/run/secrets/flownexus/http-secret.key
FLOWNEXUS_FW_PUBLIC_URL=https://fw.$domain
FLOWNEXUS_FW_COAP_PUBLIC_URL=coaps://$domain:5684
FLOWNEXUS_FW_REQUIRE_TOKEN=true
FLOWNEXUS_FW_TOKEN_SECRET_FILE=/run/secrets/flownexus/fw-token.key
FLOWNEXUS_FW_CERT_FILE=/etc/flownexus/tls/fullchain.pem
FLOWNEXUS_FW_KEY_FILE=/etc/flownexus/tls/privkey.pem
EOF
    mv "$env_file.tmp" "$env_file"
  )
  say "created $env_file"
fi

# --- 4. certificate for the firmware server, nginx ----------------------
# The container reads a copy the deploy user owns (mapped to the
# container's user by UserNS=keep-id).
if [ -n "$cert_source" ]; then
  for f in fullchain.pem privkey.pem; do
    if ! cmp -s "$cert_source/$f" "$tls_dir/$f"; then
      act install -m 0600 "$cert_source/$f" "$tls_dir/$f"
      say "certificate $f updated"
    fi
  done
fi

rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
CERT_DIR="$lineage" DOCS_ROOT="$www/flownexus/docs" APEX_ROOT="$www/flownexus/apex" \
  ACME_ROOT="$www/letsencrypt" "$repo/deploy/render-nginx.sh" --domain "$domain" --cert-name "$cert_name" "$rendered"
sed "s|@DOMAIN@|$domain|g" "$repo/nginx/index.html.in" > "$rendered/index.html"
if ! cmp -s "$rendered/index.html" "$www/flownexus/apex/index.html"; then
  act install -m 0644 "$rendered/index.html" "$www/flownexus/apex/index.html"
fi
nginx_test=(nginx -t)
if [ -n "${NGINX_CONF:-}" ]; then nginx_test=(nginx -t -c "$NGINX_CONF"); fi
changed=0
for f in flownexus-stream.conf flownexus-http.conf; do
  if ! cmp -s "$rendered/$f" "$nginx_dir/$f"; then changed=1; fi
done
if [ "$changed" = 1 ]; then
  if [ "$dry_run" = 1 ]; then
    for f in flownexus-stream.conf flownexus-http.conf; do
      diff -u "$nginx_dir/$f" "$rendered/$f" || true
    done
    echo "would install the nginx files above, run ${nginx_test[*]} and reload nginx"
  else
    saved=$(mktemp -d)
    for f in flownexus-stream.conf flownexus-http.conf; do
      if [ -e "$nginx_dir/$f" ]; then cp -p "$nginx_dir/$f" "$saved/$f"; fi
      install -m 0644 "$rendered/$f" "$nginx_dir/$f"
    done
    if ! "${sudo[@]}" "${nginx_test[@]}"; then
      # Put the previous files back so a reload elsewhere keeps working.
      for f in flownexus-stream.conf flownexus-http.conf; do
        if [ -e "$saved/$f" ]; then install -m 0644 "$saved/$f" "$nginx_dir/$f"; else rm -f "$nginx_dir/$f"; fi
      done
      rm -rf "$saved"
      die "nginx -t refused the rendered configuration; the previous files are back in $nginx_dir"
    fi
    rm -rf "$saved"
    "${sudo[@]}" nginx -s reload
    say "nginx configuration updated and reloaded"
  fi
else
  say "nginx configuration unchanged"
fi

# --- 5. lingering -------------------------------------------------------
# Enabling it for oneself needs polkit's consent, which a session without
# a seat (SSH, runuser) does not get: root's setup-host.sh enables it.
if [ "$(loginctl show-user "$user" --property=Linger --value 2>/dev/null)" != yes ]; then
  die "lingering is off for $user, so its units would stop at logout: as root, loginctl enable-linger $user (deploy/setup-host.sh does)"
fi

# --- 6. units -------------------------------------------------------------
# The container unit names the image by revision; `install_units REV`
# puts the units in place for that release.
install_units() {
  local rev=$1 tmp
  act install -m 0644 "$repo/quadlet/flownexus.volume" "$repo/quadlet/flownexus.network" "$unit_dir/"
  # Before the first release there is no image: no container unit either,
  # so nothing tries to start one at boot.
  [ -n "$rev" ] || return 0
  tmp=$(mktemp)
  sed -e "s|^Image=.*|Image=$image_repo:$rev|" "$repo/quadlet/flownexus.container" > "$tmp"
  act install -m 0644 "$tmp" "$unit_dir/flownexus.container"
  rm -f "$tmp"
}
previous=""
if [ -f "$release_file" ]; then previous=$(cat "$release_file"); fi
install_units "$previous"
act systemctl --user daemon-reload

if [ "$setup_only" = 1 ]; then
  say "setup done (--setup-only): no backup, image or restart"
  exit 0
fi

# --- 7. backup ------------------------------------------------------------
# One-shot containers of a release's own image on the data volume; the
# host's backup directory appears inside as /backups.
oneshot() {
  local rev=$1
  shift
  podman run --rm --userns keep-id:uid=10001,gid=10001 \
    --volume "$volume:/var/lib/flownexus:Z" --volume "$backup_dir:/backups:Z" \
    --volume "$secrets_dir:/run/secrets/flownexus:ro,Z" --volume "$tls_dir:/etc/flownexus/tls:ro,Z" \
    --env-file "$env_file" "$image_repo:$rev" "$@"
}
backup=""
if [ -n "$previous" ]; then
  backup="flownexus-$previous-$(date -u +%Y%m%dT%H%M%SZ).sqlite3"
  if [ "$dry_run" = 1 ]; then
    echo "would back up the database of release $previous to $backup_dir/$backup"
  else
    oneshot "$previous" backup "/backups/$backup" >/dev/null
    verdict=$(sqlite3 -readonly "$backup_dir/$backup" 'PRAGMA integrity_check;')
    [ "$verdict" = ok ] || die "backup $backup_dir/$backup failed its integrity check: $verdict"
    say "backup $backup_dir/$backup (integrity ok)"
    # Keep the newest N.
    mapfile -t old < <(find "$backup_dir" -maxdepth 1 -name 'flownexus-*.sqlite3' -printf '%T@ %p\n' | sort -rn | tail -n +"$((keep_backups + 1))" | cut -d' ' -f2-)
    for f in "${old[@]}"; do rm -f "$f"; done
  fi
else
  say "first release: nothing to back up"
fi

# --- 8. image, restart, health ----------------------------------------------
revision=${REVISION:-$(git -C "$repo" rev-parse --short=12 HEAD)}
[[ "$revision" =~ ^[A-Za-z0-9._-]+$ ]] || die "not a revision: $revision"
if [ -n "$image_ref" ]; then
  act podman pull "$image_ref"
  act podman tag "$image_ref" "$image_repo:$revision"
elif podman image exists "$image_repo:$revision"; then
  say "image $image_repo:$revision exists"
else
  act podman build --tag "$image_repo:$revision" --file "$repo/deploy/Containerfile" "$repo"
fi

healthy() {
  local until=$((SECONDS + health_timeout))
  while [ "$SECONDS" -lt "$until" ]; do
    if podman exec flownexus flownexus healthcheck >/dev/null 2>&1; then return 0; fi
    sleep "${HEALTH_POLL_S:-2}"
  done
  return 1
}

if [ "$dry_run" = 1 ]; then
  echo "would install the units for $revision, restart flownexus.service and wait for health"
  exit 0
fi
install_units "$revision"
systemctl --user daemon-reload
systemctl --user restart flownexus.service
# The documentation this release carries (the image's docs stage), swapped
# in whole so no page of an older release lingers.
publish_docs() {
  local rev=$1 cid docs="$www/flownexus/docs"
  rm -rf "$docs.new" "$docs.old"
  mkdir -p "$docs.new"
  cid=$(podman create "$image_repo:$rev")
  podman cp "$cid:/usr/share/doc/flownexus/html/." "$docs.new/"
  podman rm "$cid" >/dev/null
  [ -f "$docs.new/index.html" ] || die "the image $image_repo:$rev carries no documentation"
  if [ -d "$docs" ]; then mv "$docs" "$docs.old"; fi
  mv "$docs.new" "$docs"
  rm -rf "$docs.old"
}

if healthy; then
  echo "$revision" > "$release_file.tmp" && mv "$release_file.tmp" "$release_file"
  publish_docs "$revision"
  say "flownexus $revision is up and healthy; docs.$domain shows its documentation"
  exit 0
fi

# --- 9. rollback ----------------------------------------------------------
say "flownexus $revision did not become healthy within ${health_timeout}s" >&2
journalctl --user -u flownexus.service -n 50 --no-pager >&2 || true
if [ -z "$previous" ]; then
  systemctl --user stop flownexus.service || true
  die "first release $revision is not healthy; nothing to roll back to"
fi
say "rolling back to $previous and the pre-deploy backup $backup" >&2
systemctl --user stop flownexus.service
oneshot "$previous" restore "/backups/$backup"
install_units "$previous"
systemctl --user daemon-reload
systemctl --user restart flownexus.service
if healthy; then
  die "rolled back to $previous (healthy); $revision is not deployed"
fi
die "rolled back to $previous, which is not healthy either: see journalctl --user -u flownexus.service"
