#!/bin/sh
# The environment PACS-lite serves in: `make run` (its migrate, seed and viewer steps too),
# scripts/serve.sh and the systemd unit (deploy/pacs-lite.service).
#
#   HOST=0.0.0.0 PORT=8000 VIEWER_PORT=3000 sh scripts/serve_env.sh COMMAND [ARGS...]
#   . scripts/serve_env.sh            (from a script in scripts/, to set the variables only)
#
# Production settings (DJANGO_DEBUG stays off unless it is set to 1), filled in for one clinic
# server where the environment says nothing. Each variable below is only a default: one set
# already (in the environment, /etc/default/pacs-lite, .env) wins.
# - PACS_GENERATE_SECRET_KEY=1: without DJANGO_SECRET_KEY, the key kept in var/secret_key (0600).
# - PACS_ALLOW_PLAIN_HTTP=1: plain HTTP on the clinic's LAN (set it to 0 behind a TLS proxy).
# - DJANGO_ALLOWED_HOSTS: localhost and HOST; with HOST=0.0.0.0 (every interface) also this
#   machine's name and every address `hostname -I` lists, so the LAN can reach it.
# - OHIF_VIEWER_URL: the viewer's port on HOST, or with HOST=0.0.0.0 on this machine's first
#   address (viewer links handed to a doctor's browser must name an address it can reach).
# - RADIOLOGY_CORS_ORIGINS: the viewer's origin on every one of those names.
# - PACS_ROOT, PACS_BIN, PACS_VAR_DIR, PACS_API_BIND, PACS_VIEWER_BIND: what
#   deploy/supervisord.conf reads.
# - MALLOC_ARENA_MAX=2 (read by glibc, not Django): an app server worker's threads share two malloc
#   arenas rather than each keeping its own partly empty one: under 32 clients an API worker grew
#   1-3 MiB instead of 5-6 MiB.

: "${HOST:=127.0.0.1}"
: "${PORT:=8000}"
: "${VIEWER_PORT:=3000}"
: "${PACS_ROOT:=$(cd "$(dirname "$0")/.." && pwd)}"
: "${PACS_BIN:=$PACS_ROOT/.venv/bin}"
: "${PACS_VAR_DIR:=$PACS_ROOT/var}"
: "${DJANGO_SETTINGS_MODULE:=config.settings}"
: "${PACS_GENERATE_SECRET_KEY:=1}"
: "${PACS_ALLOW_PLAIN_HTTP:=1}"
: "${MALLOC_ARENA_MAX:=2}"

# "host" as it stands in a URL or a Host header: an IPv6 address in brackets.
_pacs_url_host() {
    case "$1" in
        \[*) printf '%s' "$1" ;;
        *:*) printf '[%s]' "$1" ;;
        *) printf '%s' "$1" ;;
    esac
}

case "$HOST" in
    0.0.0.0 | :: | "[::]")
        _pacs_addresses=$(hostname -I 2>/dev/null || true)
        _pacs_names="localhost 127.0.0.1 $(hostname 2>/dev/null || true) $_pacs_addresses"
        # The first IPv4 address the machine has, else its first address, else its name.
        _pacs_public=""
        for _pacs_address in $_pacs_addresses; do
            case "$_pacs_address" in *:*) ;; *) _pacs_public=$_pacs_address && break ;; esac
        done
        [ -n "$_pacs_public" ] || _pacs_public=$(printf '%s\n' $_pacs_addresses "$(hostname)" | head -n 1)
        ;;
    *)
        _pacs_names="localhost 127.0.0.1 $HOST"
        _pacs_public=$HOST
        ;;
esac

_pacs_hosts=""
_pacs_origins=""
for _pacs_name in $_pacs_names; do
    _pacs_name=$(_pacs_url_host "$_pacs_name")
    case ",$_pacs_hosts," in *",$_pacs_name,"*) continue ;; esac
    _pacs_hosts="${_pacs_hosts:+$_pacs_hosts,}$_pacs_name"
    _pacs_origins="${_pacs_origins:+$_pacs_origins,}http://$_pacs_name:$VIEWER_PORT"
done

: "${DJANGO_ALLOWED_HOSTS:=$_pacs_hosts}"
: "${OHIF_VIEWER_URL=http://$(_pacs_url_host "$_pacs_public"):$VIEWER_PORT/viewer}"
: "${RADIOLOGY_CORS_ORIGINS:=$_pacs_origins}"
: "${PACS_API_BIND:=$(_pacs_url_host "$HOST"):$PORT}"
: "${PACS_VIEWER_BIND:=$(_pacs_url_host "$HOST"):$VIEWER_PORT}"
# Scripts that source this file see the URLs it computed.
PACS_PUBLIC_HOST=$(_pacs_url_host "$_pacs_public")

export HOST PORT VIEWER_PORT PACS_ROOT PACS_BIN PACS_VAR_DIR DJANGO_SETTINGS_MODULE PACS_GENERATE_SECRET_KEY \
    PACS_ALLOW_PLAIN_HTTP DJANGO_ALLOWED_HOSTS OHIF_VIEWER_URL RADIOLOGY_CORS_ORIGINS PACS_API_BIND PACS_VIEWER_BIND \
    MALLOC_ARENA_MAX
unset _pacs_addresses _pacs_names _pacs_public _pacs_address _pacs_hosts _pacs_origins _pacs_name

if [ "$#" -gt 0 ]; then
    exec "$@"
fi
