#!/bin/sh
# certbot deploy hook: copy the renewed lineage to the flownexus deploy
# user, whose rootless container cannot read root's private key.
# deploy/setup-host.sh installs it as
# /etc/letsencrypt/renewal-hooks/deploy/flownexus with the user below set
# (FLOWNEXUS_DEPLOY_USER overrides it; FLOWNEXUS_DEPLOY_HOME the home the
# password database gives) and runs it once. certbot runs it after each
# issue and renewal with RENEWED_LINEAGE set; flownexus' firmware server
# reloads the files when they change.
set -eu
user=${FLOWNEXUS_DEPLOY_USER:-deploy}
lineage=${RENEWED_LINEAGE:?certbot sets RENEWED_LINEAGE}
home=${FLOWNEXUS_DEPLOY_HOME:-$(getent passwd "$user" | cut -d: -f6)}
[ -n "$home" ] || { echo "certbot-hook: no user $user" >&2; exit 1; }
dest="$home/.local/share/flownexus/tls"
install -d -o "$user" -g "$(id -gn "$user")" -m 0700 "$dest"
for f in fullchain.pem privkey.pem; do
  install -o "$user" -g "$(id -gn "$user")" -m 0600 "$lineage/$f" "$dest/$f.new"
  mv "$dest/$f.new" "$dest/$f"
done
