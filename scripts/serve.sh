#!/usr/bin/env bash
# Serve PACS-lite as production does: the last step of `make run`, and the systemd unit's ExecStart.
#
#   HOST=0.0.0.0 PORT=8000 VIEWER_PORT=3000 bash scripts/serve.sh
#
# Fills in the serving environment (scripts/serve_env.sh), brings the database up to date,
# collects the static files (admin, API docs: WhiteNoise serves them from var/static with
# DEBUG off), runs Django's checks (the deployment ones too; an error stops here), then hands
# over to supervisord (deploy/supervisord.conf), which runs the app servers (granian) behind
# nginx on both ports, the DICOM listener and the forwarder, restarts whichever crashes, and
# stops them all on Ctrl-C or SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
set --
# shellcheck source=serve_env.sh
. scripts/serve_env.sh

# supervisord writes the programs' output to /dev/stdout, which cannot be opened when stdout is
# a socket (journald under systemd): put a pipe in between then.
if ! { : >>/dev/stdout; } 2>/dev/null; then
    exec > >(exec cat) 2>&1
fi

python="$PACS_BIN/python"
# A second server started on the same port (a forgotten `make run`, an old release) would fail
# deep inside supervisord's restarts, or (with SO_REUSEPORT) join it silently and answer a share
# of the requests. Refuse to start while anything listens on either port.
"$python" - "$PACS_API_BIND" "$PACS_VIEWER_BIND" <<'PY'
import socket
import sys

for bind in sys.argv[1:]:
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers: TIME_WAIT is no obstacle
        try:
            probe.bind((host, int(port)))
        except OSError as error:
            sys.exit(f"Cannot serve on {bind}: {error.strerror}. Is PACS-lite (or another server) already running there?")
PY
mkdir -p "$PACS_VAR_DIR"
# nginx fronts both ports (config/front_proxy.py); say so now rather than through supervisord's
# restarts of a program that cannot start.
"$python" -c 'import sys; from config.front_proxy import nginx_binary; sys.exit(nginx_binary() is None)' \
    || { echo "nginx is needed in front of the app servers: install Debian's nginx-light (make run does)." >&2; exit 1; }
# The app servers behind nginx: one per usable core unless PACS_WEB_WORKERS says, each on a unix
# socket in PACS_SOCKET_DIR (var/run; a short directory of its own when that path is too long for
# a socket's address, 107 bytes on Linux).
if [ -z "${PACS_WEB_WORKERS:-}" ]; then
    PACS_WEB_WORKERS=$("$python" -c 'from config.env import usable_cores; print(usable_cores())')
fi
if [ -z "${PACS_SOCKET_DIR:-}" ]; then
    PACS_SOCKET_DIR="$PACS_VAR_DIR/run"
    [ "${#PACS_SOCKET_DIR}" -le 90 ] || PACS_SOCKET_DIR=$(mktemp -d /tmp/pacs-run.XXXXXX)
fi
# Private when made here; a directory given in PACS_SOCKET_DIR keeps its own mode.
[ -d "$PACS_SOCKET_DIR" ] || { mkdir -p "$PACS_SOCKET_DIR" && chmod 700 "$PACS_SOCKET_DIR"; }
export PACS_WEB_WORKERS PACS_SOCKET_DIR
"$python" manage.py migrate --noinput
"$python" manage.py collectstatic --noinput --verbosity 0
# Plain HTTP (PACS_ALLOW_PLAIN_HTTP=1) shows four warnings here: what it gives up (docs/security.md).
"$python" manage.py check --deploy --fail-level ERROR

# The key nginx sends with every request it passes on (X-PACS-Proxy-Key), new at every start: the
# audit trail takes the client's address from X-Forwarded-For for those requests only
# (apps/radiology/access/audit.py client_address). In no file but nginx's configuration
# (var/nginx/front.conf, 0600); the programs supervisord starts inherit it.
RADIOLOGY_VIEWER_PROXY_KEY=$("$python" -c 'import secrets; print(secrets.token_urlsafe(32))')
export RADIOLOGY_VIEWER_PROXY_KEY

api_host=$(printf '%s' "$PACS_API_BIND" | sed 's/:[0-9]*$//')
[ "$api_host" = 0.0.0.0 ] || [ "$api_host" = "[::]" ] && api_host=$PACS_PUBLIC_HOST
cat <<BANNER

PACS-lite API   http://$api_host:$PORT/api/v1/radiology/  (admin: http://$api_host:$PORT/admin/)
OHIF viewer     ${OHIF_VIEWER_URL:-(off: the built-in lite viewer)}  (open it through a study's viewer-url)
Allowed hosts   $DJANGO_ALLOWED_HOSTS
Debug           $([ "${DJANGO_DEBUG:-0}" = 1 ] && echo on || echo "off (DJANGO_DEBUG=1 turns it on)")
Demo logins: doctor, radtech, nurse, admin; password: ${DEMO_PASSWORD:-pacs-demo-2026}
Ctrl-C stops every process.

BANNER

# As root (a test box, a container), say so: supervisord otherwise warns that it kept root.
as_user=()
[ "$(id -u)" -ne 0 ] || as_user=(--user root)
exec "$PACS_BIN/supervisord" -c deploy/supervisord.conf "${as_user[@]}"
