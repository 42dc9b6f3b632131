#!/bin/sh
# The stand-in redis image's entrypoint (tests/deploy/images/redis.Dockerfile): redis-server runs as redis, with
# protected mode off (as in the official image), in /data.
set -eu
if [ "${1:-}" = redis-server ]; then
    shift
    if [ "$(id -u)" = 0 ]; then
        chown -R redis:redis /data
        exec setpriv --reuid=redis --regid=redis --init-groups redis-server --protected-mode no "$@"
    fi
    exec redis-server --protected-mode no "$@"
fi
exec "$@"
