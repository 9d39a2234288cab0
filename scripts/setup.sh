#!/usr/bin/env bash
# Installs what the project needs, and only what is missing; safe to run again.
#   scripts/setup.sh          system packages, FerretDB, Thanos, Prometheus 3, the Python venv and the dashboard's npm packages
#   scripts/setup.sh system   system packages, FerretDB, Thanos and Prometheus 3 only
#   scripts/setup.sh python   the Python venv only
#   scripts/setup.sh dashboard   the dashboard's npm packages only (serve_apps/dashboard/node_modules)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FERRETDB_VERSION=v1.24.2
THANOS_VERSION=v0.42.4
PROMETHEUS3_VERSION=v0.316.0  # Prometheus 3.16.0: its Go module numbers 3.x as v0.3xx
TOOLS=${CLOUDTUNER_TOOLS:-$HOME/.cache/cloudtuner-k8s}
PYTHON=${PYTHON:-python3}

log() { echo "setup: $*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_debian_packages() {
    local missing=()
    command -v clickhouse-server >/dev/null || missing+=(clickhouse-server clickhouse-client)
    command -v prometheus >/dev/null || missing+=(prometheus)
    command -v promtool >/dev/null || missing+=(prometheus)
    # The dashboard's browser tests: Debian's Chromium and its WebDriver; npm for its library.
    command -v chromium >/dev/null || missing+=(chromium)
    command -v chromedriver >/dev/null || missing+=(chromium-driver)
    command -v npm >/dev/null || missing+=(npm)
    [ ${#missing[@]} = 0 ] && return
    log "apt-get install ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2` builds a binary that
# panics at start ("Invalid build/version/version.txt"): the module zip lacks the
# generated version file. So: fetch that same module with the Go tool, add the file,
# build it. The result is FerretDB v1.24.2, unchanged.
install_ferretdb() {
    local bin="$TOOLS/bin/ferretdb"
    if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "version: $FERRETDB_VERSION"; then
        return
    fi
    command -v go >/dev/null || { log "Go is needed to build FerretDB; install Go ≥ 1.21"; exit 1; }
    log "building FerretDB $FERRETDB_VERSION"
    local dir src
    dir=$(go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
    [ -d "$dir" ] || { log "go mod download of FerretDB $FERRETDB_VERSION failed"; exit 1; }
    src=$(mktemp -d)
    cp -r "$dir/." "$src" && chmod -R u+w "$src"
    echo "$FERRETDB_VERSION" > "$src/build/version/version.txt"
    mkdir -p "$TOOLS/bin"
    (cd "$src" && go build -trimpath -o "$bin.tmp" ./cmd/ferretdb) && mv "$bin.tmp" "$bin"
    rm -rf "$src"
}

# Prometheus' and Thanos' releases, built from their Go modules: `go install` refuses a
# module with replace directives, so the module is built in a copy of itself, the way its
# release is (.promu.yml), with the version stamped so `--version` says what runs; the
# module's checksum stands for the commit, which its zip does not carry.
# build_go_module NAME MODULE TAG VERSION BUILD_TAGS MAIN_PACKAGE BINARY
build_go_module() {
    local name=$1 module=$2 tag=$3 version=$4 build_tags=$5 main=$6 bin=$7
    local info dir sum src
    info=$(GOTOOLCHAIN=local go mod download -json "$module@$tag")
    dir=$(sed -n 's/^\t"Dir": "\(.*\)",$/\1/p' <<<"$info")
    sum=$(sed -n 's/^\t"Sum": "\(.*\)",$/\1/p' <<<"$info")
    [ -d "$dir" ] || { log "go mod download of $name $tag failed"; exit 1; }
    [ "$(cat "$dir/VERSION")" = "$version" ] || { log "module $tag is $name $(cat "$dir/VERSION"), not $version"; exit 1; }
    src=$(mktemp -d)
    cp -r "$dir/." "$src" && chmod -R u+w "$src"
    log "$name: downloading its dependencies"
    # GOWORK=off: Prometheus' go.work names nested modules its module zip leaves out.
    (cd "$src" && GOWORK=off GOTOOLCHAIN=local GOFLAGS=-mod=mod go mod download)
    log "$name: compiling"
    local pkg=github.com/prometheus/common/version
    mkdir -p "$(dirname "$bin")"
    (cd "$src" && GOWORK=off GOTOOLCHAIN=local GOFLAGS=-mod=mod go build -trimpath -tags "$build_tags" -ldflags "\
        -X $pkg.Version=$version -X $pkg.Revision=$sum -X $pkg.Branch=$tag \
        -X $pkg.BuildUser=cloudtuner -X $pkg.BuildDate=$(date -u +%Y%m%d-%H:%M:%S)" \
        -o "$bin.tmp" "$main") && mv "$bin.tmp" "$bin"
    rm -rf "$src"
    log "$name: $("$bin" --version 2>&1 | head -n 1)"
}

# Thanos v0.42.4: the newest release this machine's Go (1.26.8) builds. v0.37-v0.39 need
# zenhack.net/go/util, which the module proxy refuses (its domain expired); v0.42 replaces it
# with github.com/zenhack/go-util. v0.42.5 needs Go >= 1.26.10 and toolchains cannot be
# downloaded here. v0.42 evaluates PromQL with the Prometheus 3 engine, as production does.
# Its release's tags: netgo,slicelabels (Thanos casts Prometheus labels to its own slices in
# place, which is only sound with slicelabels).
install_thanos() {
    local bin="$TOOLS/bin/thanos" version=${THANOS_VERSION#v}
    # `thanos --version` prints to stderr.
    if [ -x "$bin" ] && "$bin" --version 2>&1 | grep -q "version $version " \
        && "$bin" --version 2>&1 | grep -q "tags: *netgo,slicelabels"; then
        return
    fi
    command -v go >/dev/null || { log "Go is needed to build Thanos; install Go >= 1.26"; exit 1; }
    log "building Thanos $THANOS_VERSION (about 5 minutes on 2 cores)"
    build_go_module Thanos github.com/thanos-io/thanos "$THANOS_VERSION" "$version" netgo,slicelabels ./cmd/thanos "$bin"
}

# Prometheus 3.16.0 (module v0.316.0, the newest the module proxy serves; it needs Go >= 1.26.7),
# beside Debian's 2.42: the tests check the integral on its engine too (left-open range
# selectors, as Thanos >= v0.38 has), not only through Thanos Query. Built as Thanos is, in a
# copy of its module, and named prometheus3 so it is never taken for Debian's `prometheus`.
# The release's tags are netgo,builtinassets; builtinassets embeds the web UI, which must be
# built with npm first and which nothing here uses (the API is all the tests ask), so: netgo.
install_prometheus3() {
    local bin="$TOOLS/bin/prometheus3" n=${PROMETHEUS3_VERSION#v0.}
    # v0.316.0 is 3.16.0: the minor number's hundreds are the major version.
    local version=$((${n%%.*} / 100)).$((${n%%.*} % 100)).${n#*.}
    if [ -x "$bin" ] && "$bin" --version 2>&1 | grep -q "version $version "; then
        return
    fi
    command -v go >/dev/null || { log "Go is needed to build Prometheus 3; install Go >= 1.26.7"; exit 1; }
    log "building Prometheus $version (module $PROMETHEUS3_VERSION; about 9 minutes on 2 cores)"
    build_go_module "Prometheus 3" github.com/prometheus/prometheus "$PROMETHEUS3_VERSION" "$version" netgo ./cmd/prometheus "$bin"
}

install_python() {
    local venv="$ROOT/.venv" stamp="$ROOT/.venv/.installed"
    if [ ! -x "$venv/bin/python" ]; then
        log "creating $venv"
        "$PYTHON" -m venv "$venv"
    fi
    # Reinstall only when the dependencies changed.
    local want
    want=$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        log "pip install -e .[test]"
        "$venv/bin/pip" install -q --disable-pip-version-check -e "$ROOT[test]"
        echo "$want" > "$stamp"
    fi
}

# The dashboard's chart library, from npm as pinned by its lockfile; never in the repo.
install_dashboard() {
    local dir="$ROOT/serve_apps/dashboard" stamp="$ROOT/serve_apps/dashboard/node_modules/.installed"
    local want
    want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
    if [ ! -d "$dir/node_modules" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        command -v npm >/dev/null || { log "npm is needed for the dashboard; run scripts/setup.sh system"; exit 1; }
        log "npm ci in serve_apps/dashboard"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
        echo "$want" > "$stamp"
    fi
}

case "${1:-all}" in
    system) install_debian_packages; install_ferretdb; install_thanos; install_prometheus3 ;;
    python) install_python ;;
    dashboard) install_dashboard ;;
    all) install_debian_packages; install_ferretdb; install_thanos; install_prometheus3; install_python; install_dashboard ;;
    *) echo "usage: $0 [all|system|python|dashboard]" >&2; exit 2 ;;
esac
