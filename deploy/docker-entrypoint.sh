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
# Configuration comes from the environment: CMS_OUTBOX_URL (required in a
# container: e.g. sqlite:////data/outbox.db on a volume, or postgresql+psycopg://...),
# CMS_BEARER_TOKEN (from a secret, never baked into the image), CMS_HOST.
#
# Dockerfile:
#   COPY deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
#   ENTRYPOINT ["docker-entrypoint.sh"]
#   STOPSIGNAL SIGTERM
#   HEALTHCHECK --interval=30s --timeout=10s --start-period=30s \
#     CMD cms-outbox health --max-pending-age 10m
#
# Give the daemon time for a graceful stop: `docker stop -t 30`, or in Compose
# `stop_grace_period: 30s` (Kubernetes: terminationGracePeriodSeconds: 30).
set -eu

if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec cms-outbox "$@"
fi

cms-outbox migrate
exec cms-outbox run "$@"
