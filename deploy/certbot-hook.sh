#!/bin/sh
# certbot deploy hook: copy the renewed lineage to the flownexus deploy
# user, whose rootless container cannot read root's private key. Install
# once as root:
#   install -m 0755 deploy/certbot-hook.sh /etc/letsencrypt/renewal-hooks/deploy/flownexus
# and set the user below (or FLOWNEXUS_DEPLOY_USER in the environment).
# certbot runs it after each issue and renewal with RENEWED_LINEAGE set;
# flownexus' firmware server reloads the files when they change.
set -eu
user=${FLOWNEXUS_DEPLOY_USER:-deploy}
lineage=${RENEWED_LINEAGE:?certbot sets RENEWED_LINEAGE}
home=$(getent passwd "$user" | cut -d: -f6)
[ -n "$home" ] || { echo "certbot-hook: no user $user" >&2; exit 1; }
dest="$home/.local/share/flownexus/tls"
install -d -o "$user" -g "$(id -gn "$user")" -m 0700 "$dest"
for f in fullchain.pem privkey.pem; do
  install -o "$user" -g "$(id -gn "$user")" -m 0600 "$lineage/$f" "$dest/$f.new"
  mv "$dest/$f.new" "$dest/$f"
done
