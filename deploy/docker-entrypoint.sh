#!/bin/sh
# Container entrypoint for the cms-outbox delivery daemon.
#
# Migrates the outbox tables (a clear error and exit 3 when the database is
# unreachable), then replaces itself with `cms-outbox run`, so that the daemon is
# PID 1 and receives `docker stop`'s SIGTERM: it stops leasing, lets requests in
# flight finish (at most ~15 s with the default timeouts), hands unsent rows back
# and exits 0. Arguments go to `cms-outbox run`; a first argument that is not an
# option runs that command instead (`docker run IMAGE status --json`).
#
# Configuration comes from the environment or from `run`'s flags:
#   CMS_OUTBOX_URL    required (or --database-url): an absolute SQLite path on a volume,
#                     sqlite:////data/outbox.db (four slashes), or postgresql+psycopg://...
#                     The default sqlite:///cms_outbox.db would live, and be lost, in the
#                     container's own filesystem: the daemon refuses to start without it.
#   CMS_BEARER_TOKEN  required by the daemon, from a secret (never baked into the image).
#   CMS_HOST          optional (default https://api.cme.sh).
# Without them it exits 2 before touching any database; the database that it migrates
# is the one the daemon runs on, whether named by CMS_OUTBOX_URL or by --database-url.
# A SQLite path whose directory does not exist (a volume not mounted, a mistyped path)
# exits 5 and creates nothing; pass --create-directories to have it created.
#
# Dockerfile:
#   COPY deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
#   ENTRYPOINT ["docker-entrypoint.sh"]
#   STOPSIGNAL SIGTERM
#   HEALTHCHECK --interval=30s --timeout=10s --start-period=30s \
#     CMD cms-outbox health --max-pending-age 10m
# The check also fails on events gone dead or blocked since the last retry or purge: an
# alert, not a reason to restart. A probe that restarts (Kubernetes livenessProbe) should
# add `--max-dead any --max-blocked any`.
#
# Metrics for a scraper outside the container: `--metrics-port 9464 --metrics-address
# 0.0.0.0` (the daemon serves them on 127.0.0.1 by default).
#
# Give the daemon time for a graceful stop: `docker stop -t 30`, or in Compose
# `stop_grace_period: 30s` (Kubernetes: terminationGracePeriodSeconds: 30).
set -eu

if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec cms-outbox "$@"
fi

fail() {
    echo "docker-entrypoint.sh: error: $*" >&2
    exit 2
}

# The database `run` will use: its --database-url flag wins over CMS_OUTBOX_URL.
url="${CMS_OUTBOX_URL:-}"
previous=""
create=""
for argument in "$@"; do
    case "$previous" in --database-url) url="$argument" ;; esac
    case "$argument" in
        --database-url=*) url="${argument#--database-url=}" ;;
        --create-directories) create="--create-directories" ;;
    esac
    previous="$argument"
done

[ -n "$url" ] || fail "no outbox database: set CMS_OUTBOX_URL (e.g. sqlite:////data/outbox.db" \
    "on a volume, or postgresql+psycopg://...) or pass --database-url; the default" \
    "sqlite:///cms_outbox.db would be lost with the container"
case "$url" in
    sqlite*:///*)
        case "${url#*:///}" in
            /*) ;;
            *) fail "the SQLite path in $url is relative to the working directory:" \
                "use an absolute path on a volume, sqlite:////data/outbox.db (four slashes)" ;;
        esac ;;
esac
[ -n "${CMS_BEARER_TOKEN:-}" ] || fail "no token: set CMS_BEARER_TOKEN (from a secret;" \
    "it is never a flag, flags show in process lists)"

export CMS_OUTBOX_URL="$url"
cms-outbox migrate $create
exec cms-outbox run "$@"
