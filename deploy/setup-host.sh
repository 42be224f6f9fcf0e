#!/usr/bin/env bash
# Root's one-time setup of a Debian 13 host for flownexus, in the order
# docs/operator-guide.md gives (tests/system/deploy.rs runs the guide's
# commands against stand-ins, step by step):
#
#   deploy/setup-host.sh --domain example.com --cert-name example.com --email ops@example.com
#
# Each run, idempotent (a second run changes nothing that is already right):
#   1. checks this is Debian 13 or newer and installs the packages;
#   2. creates the deploy user with subordinate ids for rootless Podman,
#      and enables lingering so its units run without a login;
#   3. creates the directories the deploy user writes (nginx's included
#      files, /var/www/flownexus) and lets it check and reload nginx;
#   4. persists a firewall: drop by default; SSH, 80, 443, 5683/udp and
#      5684/udp open (nftables, loaded at boot);
#   5. starts nginx on the port-80 server alone (render-nginx.sh
#      --acme-only), includes its files in nginx.conf, and gets the
#      certificate with certbot's webroot, so renewals need nothing freed
#      (a lineage issued with --standalone is moved to webroot);
#   6. installs the certbot hook that copies each renewal to the deploy
#      user, and runs it once;
#   7. clones this checkout for the deploy user (~/flownexus) and runs
#      `deploy/deploy.sh --setup-only` as that user, which renders the full
#      nginx configuration and reloads nginx.
# What is left is the first deploy, as the deploy user (the guide's §4).
#
# Options:
#   --domain DOMAIN     the apex name: fw., dashboard. and docs. live below it
#   --cert-name NAME    certbot lineage covering all four names
#   --email ADDRESS     Let's Encrypt account address (expiry notices)
#   --user NAME         the deploy user (default deploy)
#   --ssh-port N        SSH port(s) the firewall keeps open (repeatable;
#                       default: what `sshd -T` reports, else 22)
#   --staging           certbot's staging CA (a rehearsal; browsers refuse it)
#   --dry-run           print what would change, change nothing
#   --root DIR          operate on DIR as if it were / (tests)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
domain="" cert_name="" email="" user=deploy ssh_ports=() staging=0 dry_run=0 root=""

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
}

die() {
  echo "setup-host: $*" >&2
  exit 1
}

while [ $# -gt 0 ]; do
  case "$1" in
    --domain) domain=${2:?--domain needs a value}; shift 2 ;;
    --cert-name) cert_name=${2:?--cert-name needs a value}; shift 2 ;;
    --email) email=${2:?--email needs an address}; shift 2 ;;
    --user) user=${2:?--user needs a name}; shift 2 ;;
    --ssh-port) ssh_ports+=("${2:?--ssh-port needs a number}"); shift 2 ;;
    --staging) staging=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --root) root=${2:?--root needs a directory}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "setup-host: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
[ -n "$domain" ] || die "--domain is required (the apex name, e.g. example.com)"
[ -n "$cert_name" ] || die "--cert-name is required (the certbot lineage, e.g. example.com)"
[ -n "$email" ] || die "--email is required (Let's Encrypt's expiry notices go there)"
# The same rules as deploy.sh and render-nginx.sh: nothing that could end a
# line of a file this writes or a directive of nginx's.
[[ "$domain" =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]] || die "not a domain name: $domain"
[[ "$cert_name" =~ ^[A-Za-z0-9._-]+$ ]] || die "not a certbot lineage name: $cert_name"
[[ "$email" =~ ^[^[:space:]@]+@[A-Za-z0-9.-]+$ ]] || die "not an e-mail address: $email"
[[ "$user" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "not a user name: $user"
for p in "${ssh_ports[@]}"; do
  if ! [[ "$p" =~ ^[1-9][0-9]{0,4}$ ]] || [ "$p" -gt 65535 ]; then die "not a port: $p"; fi
done

if [ -n "$root" ]; then
  mkdir -p "$root"
  root=$(cd "$root" && pwd)
elif [ "$(id -u)" != 0 ]; then
  die "run as root (sudo deploy/setup-host.sh …): it installs packages and creates the deploy user"
fi
etc="$root/etc"

act() {
  if [ "$dry_run" = 1 ]; then
    echo "would run: $*"
  else
    "$@"
  fi
}

say() { echo "setup-host: $*"; }

# Writes stdin to PATH (mode MODE) when the bytes differ; says so.
put() {
  local path=$1 mode=$2 tmp
  tmp=$(mktemp)
  cat > "$tmp"
  if cmp -s "$tmp" "$path"; then
    rm -f "$tmp"
    return 0
  fi
  if [ "$dry_run" = 1 ]; then
    echo "would write $path"
    rm -f "$tmp"
    return 0
  fi
  install -m "$mode" "$tmp" "$path"
  rm -f "$tmp"
  say "wrote $path"
}

# --- 1. Debian 13 and the packages ----------------------------------------
# Quadlet (podman-systemd.unit(5)) needs Podman 4.6 for the keys
# quadlet/flownexus.container uses; Debian 12 ships 4.3.1, which has no
# Quadlet generator at all, and no newer Podman of its own.
os_field() { sed -n "s/^$1=\"\{0,1\}\([^\"]*\)\"\{0,1\}\$/\1/p" "$etc/os-release" 2>/dev/null; }
version_id=$(os_field VERSION_ID)
os_id=$(os_field ID)
if [ "$os_id" != debian ] || ! [[ "$version_id" =~ ^[0-9]+$ ]] || [ "$version_id" -lt 13 ]; then
  die "this is ${os_id:-an unknown system} ${version_id:-}: flownexus' host is Debian 13 (trixie) or newer (Debian 12's Podman 4.3 has no Quadlet)"
fi
packages=(podman uidmap passt dbus-user-session systemd-container nginx libnginx-mod-stream
  certbot nftables sudo sqlite3 openssl git)
act env DEBIAN_FRONTEND=noninteractive apt-get update -qq
act env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"

# --- 2. the deploy user -----------------------------------------------------
if ! getent passwd "$user" >/dev/null; then
  act useradd --create-home --shell /bin/bash --comment "flownexus deploys" "$user"
  say "created user $user (no password: reach it with machinectl shell $user@ or by SSH key)"
fi
# Rootless Podman maps the container's users onto 65536 subordinate ids;
# useradd allocates them when login.defs says so, else they are added here.
for kind in uid gid; do
  if ! grep -q "^$user:" "$etc/sub$kind" 2>/dev/null; then
    # After every range already given out in that file (none: 100000).
    start=100000
    if [ -f "$etc/sub$kind" ]; then
      start=$(awk -F: 'BEGIN { m = 100000 } { if ($2 + $3 > m) m = $2 + $3 } END { print m }' "$etc/sub$kind")
    fi
    act usermod "--add-sub${kind}s" "$start-$((start + 65535))" "$user"
  fi
done
home=$(getent passwd "$user" | cut -d: -f6)
uid=$(getent passwd "$user" | cut -d: -f3)
if [ "$dry_run" = 1 ] && [ -z "$home" ]; then home=/home/$user uid=1000; fi
act loginctl enable-linger "$user"

# --- 3. directories the deploy user writes, nginx's check and reload --------
act install -d -o "$user" -m 0755 "$etc/nginx/flownexus" "$root/var/www/flownexus"
act install -d -m 0755 "$root/var/www/letsencrypt" "$etc/sudoers.d"
# The deploy user runs exactly these two as root, nothing else; it writes
# the files nginx includes, so it is trusted with nginx's configuration.
put "$etc/sudoers.d/flownexus" 0440 <<EOF
# flownexus' deploy user may check and reload nginx (deploy/setup-host.sh).
$user ALL=(root) NOPASSWD: /usr/sbin/nginx -t, /usr/sbin/nginx -s reload
EOF
[ "$dry_run" = 1 ] || visudo -c -q -f "$etc/sudoers.d/flownexus" || die "visudo refused $etc/sudoers.d/flownexus"

# --- 4. firewall ------------------------------------------------------------
if [ ${#ssh_ports[@]} -eq 0 ]; then
  mapfile -t ssh_ports < <(sshd -T 2>/dev/null | awk '$1 == "port" { print $2 }')
  [ ${#ssh_ports[@]} -gt 0 ] || ssh_ports=(22)
fi
ssh_list=$(IFS=,; echo "${ssh_ports[*]}")
act install -d -m 0755 "$etc/nftables.d"
# A table of its own with a drop policy: a packet passes only if every
# table's input chain accepts it, so Debian's accept-all `inet filter`
# stays harmless and nothing of it needs editing.
put "$etc/nftables.d/flownexus.nft" 0644 <<EOF
# flownexus' host firewall, written by deploy/setup-host.sh (rewritten on
# every run; change the script's options, not this file).
table inet flownexus {
  chain input {
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    ct state invalid drop
    iif lo accept
    # ICMP errors and IPv6 neighbour discovery; DHCP answers.
    meta l4proto { icmp, ipv6-icmp } accept
    udp sport 67 udp dport 68 accept
    udp sport 547 udp dport 546 accept
    # SSH, so this host stays reachable.
    tcp dport { $ssh_list } accept
    # certbot's HTTP-01 and redirects; nginx (dashboard, docs, fw. by SNI).
    tcp dport { 80, 443 } accept
    # LwM2M: CoAP and CoAP over DTLS.
    udp dport { 5683, 5684 } accept
  }
}
EOF
include_line="include \"/etc/nftables.d/flownexus.nft\""
if ! grep -qxF "$include_line" "$etc/nftables.conf" 2>/dev/null; then
  if [ "$dry_run" = 1 ]; then
    echo "would add to $etc/nftables.conf: $include_line"
  else
    [ -f "$etc/nftables.conf" ] || printf '#!/usr/sbin/nft -f\n\nflush ruleset\n' > "$etc/nftables.conf"
    printf '\n# flownexus (deploy/setup-host.sh)\n%s\n' "$include_line" >> "$etc/nftables.conf"
    say "added the flownexus table to $etc/nftables.conf"
  fi
fi
if [ "$dry_run" = 0 ] && [ -z "$root" ]; then
  nft -c -f /etc/nftables.conf || die "nft refused /etc/nftables.conf; nothing was loaded"
fi
act systemctl enable --now nftables.service
act systemctl reload-or-restart nftables.service

# --- 5. nginx on port 80 alone, then the certificate by webroot ------------
nginx_dir="$etc/nginx/flownexus"
acme=$(mktemp -d)
trap 'rm -rf "$acme"' EXIT
ACME_ROOT=/var/www/letsencrypt "$repo/deploy/render-nginx.sh" --acme-only \
  --domain "$domain" --cert-name "$cert_name" "$acme"
for f in flownexus-stream.conf flownexus-http.conf; do
  # Only where the deploy has not rendered the full files yet.
  if [ ! -e "$nginx_dir/$f" ]; then
    put "$nginx_dir/$f" 0644 < "$acme/$f"
    act chown "$user" "$nginx_dir/$f"
  fi
done
# Debian's default site would take port 80 as default_server.
if [ -e "$etc/nginx/sites-enabled/default" ] || [ -L "$etc/nginx/sites-enabled/default" ]; then
  act rm -f "$etc/nginx/sites-enabled/default"
fi
# `stream` sits at the top level of nginx.conf, after Debian's
# modules-enabled include that loads the stream module; the sites inside
# `http {`.
conf="$etc/nginx/nginx.conf"
stream_include="include /etc/nginx/flownexus/flownexus-stream.conf;"
http_include="include /etc/nginx/flownexus/flownexus-http.conf;"
if ! grep -qF "$stream_include" "$conf"; then
  if [ "$dry_run" = 1 ]; then echo "would add to $conf: $stream_include"; else
    printf '\n# flownexus (deploy/setup-host.sh): SNI pass-through on 443\n%s\n' "$stream_include" >> "$conf"
  fi
fi
if ! grep -qF "$http_include" "$conf"; then
  grep -q '^http {' "$conf" || die "$conf has no 'http {' line to include the sites in"
  if [ "$dry_run" = 1 ]; then echo "would add inside http { } of $conf: $http_include"; else
    sed -i "/^http {/a\\\t$http_include" "$conf"
  fi
fi
act nginx -t
act systemctl enable nginx.service
act systemctl reload-or-restart nginx.service

lineage="$etc/letsencrypt/live/$cert_name"
renewal="$etc/letsencrypt/renewal/$cert_name.conf"
names=(-d "$domain" -d "fw.$domain" -d "dashboard.$domain" -d "docs.$domain")
ca=()
[ "$staging" = 0 ] || ca=(--test-cert)
if [ ! -e "$lineage/fullchain.pem" ]; then
  act certbot certonly --non-interactive --agree-tos --email "$email" "${ca[@]}" \
    --webroot -w /var/www/letsencrypt --cert-name "$cert_name" "${names[@]}"
elif grep -q '^authenticator = standalone' "$renewal" 2>/dev/null; then
  # Standalone renewals need port 80, which nginx holds: they would fail.
  act certbot reconfigure --non-interactive --cert-name "$cert_name" --webroot -w /var/www/letsencrypt
  say "the $cert_name lineage now renews by webroot"
fi

# --- 6. the certbot hook ------------------------------------------------------
hook="$etc/letsencrypt/renewal-hooks/deploy/flownexus"
act install -d -m 0755 "$(dirname "$hook")"
# certbot runs the hook without our environment: the user is written in.
sed "s|^user=\${FLOWNEXUS_DEPLOY_USER:-deploy}\$|user=\${FLOWNEXUS_DEPLOY_USER:-$user}|" \
  "$repo/deploy/certbot-hook.sh" | put "$hook" 0755
hook_env=(RENEWED_LINEAGE="$lineage")
[ -z "$root" ] || hook_env+=(FLOWNEXUS_DEPLOY_HOME="$root$home")
act env "${hook_env[@]}" "$hook"

# --- 7. the deploy user's checkout and its setup ------------------------------
checkout="$root$home/flownexus"
if [ ! -d "$checkout/.git" ]; then
  origin=$(git -C "$repo" remote get-url origin 2>/dev/null || true)
  act git clone --quiet "$repo" "$checkout"
  # Later deploys fetch from where this checkout came from.
  [ -z "$origin" ] || act git -C "$checkout" remote set-url origin "$origin"
  act chown -R "$user:" "$checkout"
fi
as_user=(runuser -u "$user" -- env HOME="$home" XDG_RUNTIME_DIR="/run/user/$uid"
  DBUS_SESSION_BUS_ADDRESS="unix:path=/run/user/$uid/bus")
setup=("$checkout/deploy/deploy.sh" --domain "$domain" --cert-name "$cert_name" --setup-only)
[ -z "$root" ] || setup+=(--root "$root")
if [ "$dry_run" = 1 ]; then
  echo "would run as $user: ${setup[*]}"
else
  (cd "$root$home" && "${as_user[@]}" "${setup[@]}")
fi

say "host ready. Next, as $user (machinectl shell $user@, or ssh $user@$domain):"
say "  cd ~/flownexus && deploy/deploy.sh --domain $domain --cert-name $cert_name"
