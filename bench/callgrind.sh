#!/usr/bin/env bash
# Instructions per request, counted by callgrind: repeatable where CPU time on a VM is not.
#
#   bench/callgrind.sh                          # all variants below
#   bench/callgrind.sh wasmgate plugin1         # a subset, in this order
#
# Per variant: the release gateway (workers = 1, one route "/{*rest}" to a local nginx
# upstream) runs under `valgrind --tool=callgrind`; `wrk -t1 -c10` loads it for WARMUP s,
# `callgrind_control -d` dumps (and zeroes) the counters, MEASURE s more load follow, a second
# dump ends the interval, and the instructions of the second dump (all threads, user space)
# are divided by the requests wrk completed in it. An idle interval (IDLE s, no load, between
# two more dumps) is measured too: its instructions per second are what the process spends
# without requests (timers, the plugin watchdog). Under
# valgrind the gateway serves only a few thousand requests per second, so that idle cost
# weighs much more per request than at native speed; "net" subtracts it (idle rate x the
# measured interval) and is the better estimate of the work a request itself causes.
#
# Variants (the same configs as bench/proxy.sh: both take them from bench/lib.sh):
#   wasmgate    no plugins
#   plugin1     first_plugin (reads x-block, sets x-hello), isolation = "pooled"
#   plugin1-pr  the same, isolation = "per-request"
#   chain3      three test_plugins in tag mode (a, b, c), pooled
#   chain3-pr   the same chain, per-request
#   jwt-hs256   jwt, HS256, one token (made with openssl) on every request: after the first
#               request per instance the plugin's verified-token cache answers, so this
#               measures the cached path, not a signature check
#   jwt-rs256   jwt, RS256 with a JWKS (plugins/jwt/tests/fixtures/rsa-a.pem), one token: cached too
#   jwt-rs256-nocache  jwt-rs256 with JWT_TOKENS (default 2000) distinct tokens in turn: an RS256
#               signature check per request (slow under valgrind: expect few requests)
#   headers     headers: request set from {client_ip} and {request_id}, response set + remove
#   chain       jwt (jwt-hs256's, plus claims_to_context) + headers (headers') + a rate limit
#               keyed on ctx:user_id, far above the load: the whole policy chain
#   routesN     no plugins, N generated routes (e.g. routes10 routes10000; bench/lib.sh's
#               routes_toml), the load on one route two thirds down the list; not in the default
#               set (bench/routes.sh runs them)
#
# Environment:
#   VALGRIND     valgrind binary (default: /opt/valgrind-bigas/bin/valgrind if present, else
#                `valgrind`); callgrind_control is taken from its dir
#   WARMUP       seconds of load before the first dump   (default 3)
#   MEASURE      seconds of load between the dumps       (default 8)
#   IDLE         seconds without load for the idle rate  (default 4; 0 = skip)
#   CONNECTIONS  wrk connections                         (default 10)
#   TOP          functions to print per variant (default 15; 0 = none); OUT/VARIANT/top.txt has
#                more: by object, by function, inclusive, and the increase over plain wasmgate
#                (bench/callgrind_top.py; wasmgate must come first in the list for that)
#   OUT          directory for configs, logs, callgrind files (default: a new dir in /tmp, kept)
#   SKIP_BUILD   1 = do not run cargo build              (default 0)
#   PLUGIN_DIR   as in bench/proxy.sh
#
# Plugins need a patched valgrind. wasmtime's pooling allocator reserves about 16 TiB of
# address space up front (4000 memory slots of about 4 GiB); valgrind 3.19 manages at most
# 128 GiB, so the gateway fails with "failed to create memory pool mapping: mmap failed
# to reserve ... bytes". Raising one constant is enough for callgrind (it has no shadow memory):
#
#   apt-get source valgrind       # needs a deb-src line; Debian 12 has 3.19.0
#   cd valgrind-3.19.0
#   # coregrind/m_aspacemgr/aspacemgr-linux.c, Linux 64-bit branch:
#   #   aspacem_maxAddr = (Addr)0x2000000000ULL - 1; // 128G
#   # becomes
#   #   aspacem_maxAddr = (Addr)0x600000000000ULL - 1; // 96T
#   ./configure --prefix=/opt/valgrind-bigas --enable-only64bit && make -j2 && make install
#
# Plain wasmgate gives the same counts under the stock and the patched valgrind.

set -uo pipefail

WARMUP=${WARMUP:-3}
MEASURE=${MEASURE:-8}
IDLE=${IDLE:-4}
CONNECTIONS=${CONNECTIONS:-10}
TOP=${TOP:-15}
SKIP_BUILD=${SKIP_BUILD:-0}
if [[ -z "${VALGRIND:-}" ]]; then
    if [[ -x /opt/valgrind-bigas/bin/valgrind ]]; then VALGRIND=/opt/valgrind-bigas/bin/valgrind
    else VALGRIND=$(command -v valgrind || echo valgrind); fi
fi
VG_DIR=$(dirname "$VALGRIND")
CG_CONTROL="$VG_DIR/callgrind_control"
[[ -x "$CG_CONTROL" ]] || CG_CONTROL=$(command -v callgrind_control)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
# the binary `cargo build --release` writes (CARGO_TARGET_DIR is honoured, so a shared target dir
# does not leave the script running a stale binary)
WASMGATE="$(cargo_target_dir)/release/wasmgate"
PLUGIN_DIR=${PLUGIN_DIR:-$ROOT/target/wasm-plugins/wasm32-wasip2/release}
ALL_VARIANTS="wasmgate plugin1 plugin1-pr chain3 chain3-pr jwt-hs256 jwt-rs256 jwt-rs256-nocache headers chain"
VARIANTS=("$@")
((${#VARIANTS[@]})) || read -r -a VARIANTS <<<"$ALL_VARIANTS"

# the variants' configs, tokens, wrk arguments and probes
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

for v in "${VARIANTS[@]}"; do
    known_target "$v" "$ALL_VARIANTS" || die "unknown variant '$v' (known: $ALL_VARIANTS routesN)"
done
PATH="$PATH:/usr/sbin"
for tool in wrk nginx curl python3 "$VALGRIND" "$CG_CONTROL"; do
    command -v "$tool" >/dev/null 2>&1 || die "missing tool: $tool (apt-get install -y valgrind wrk nginx-light curl)"
done

if [[ "$SKIP_BUILD" != 1 ]]; then
    say "cargo build --release -p wasmgate"
    (cd "$ROOT" && cargo build --release -p wasmgate) || die "cargo build failed"
fi
[[ -x "$WASMGATE" ]] || die "$WASMGATE not found"
for v in "${VARIANTS[@]}"; do
    for wasm in $(plugin_wasm "$v"); do
        [[ -f "$PLUGIN_DIR/$wasm" ]] || die "$PLUGIN_DIR/$wasm not found (built by cargo build; or set PLUGIN_DIR)"
    done
done

OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/wasmgate-callgrind.XXXXXX")}
mkdir -p "$OUT"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    say "kept $OUT"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

USED_PORTS=""

# ---------------------------------------------------------------- upstream nginx
pick_port; UP_PORT=$PORT
mkdir -p "$OUT/upstream/logs" "$OUT/upstream/tmp"
cat >"$OUT/upstream/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $OUT/upstream/nginx.pid;
error_log $OUT/upstream/logs/error.log warn;
events { worker_connections 4096; }
http {
    client_body_temp_path $OUT/upstream/tmp/body;
    proxy_temp_path $OUT/upstream/tmp/proxy;
    fastcgi_temp_path $OUT/upstream/tmp/fastcgi;
    uwsgi_temp_path $OUT/upstream/tmp/uwsgi;
    scgi_temp_path $OUT/upstream/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 1h;
    access_log off;
    server {
        listen 127.0.0.1:$UP_PORT;
        location / { default_type text/plain; return 200 "hello\n"; }
    }
}
EOF
nginx -e "$OUT/upstream/logs/error.log" -p "$OUT/upstream" -c "$OUT/upstream/nginx.conf" \
    >"$OUT/upstream/logs/stdout.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do [[ "$(curl -s -m 1 "http://127.0.0.1:$UP_PORT/")" == hello ]] && break; sleep 0.1; done
[[ "$(curl -s -m 1 "http://127.0.0.1:$UP_PORT/")" == hello ]] || die "upstream nginx did not start"

# ---------------------------------------------------------------- configs
# gateway_toml, prepare_target, wrk_args, probe_target: bench/lib.sh (shared with bench/proxy.sh)

# instructions in one callgrind file (the "summary:"/"totals:" line, else the sum of all costs)
instructions() {
    awk '/^(summary|totals):/ { print $2; found = 1; exit }
         END { if (!found) print "" }' "$1"
}
requests_of() { awk '/requests in/ {print $1; exit}' "$1"; }

declare -A RES_IR RES_REQ RES_RATE RES_IDLE RES_NET
for v in "${VARIANTS[@]}"; do
    dir="$OUT/$v"
    mkdir -p "$dir"
    rm -f "$dir"/callgrind.out*
    pick_port; port=$PORT
    prepare_target "$v" "$dir"
    extra=()
    mapfile -t extra < <(wrk_args "$v" "$dir")
    gateway_toml "$v" "$port" "$UP_PORT" >"$dir/gateway.toml"
    # Compile the plugins natively first (into the compile cache): under valgrind the gateway
    # cannot run its compile process (/proc/self/exe is valgrind's launcher) and would compile
    # in-process, a minute for jwt.
    "$WASMGATE" check -c "$dir/gateway.toml" >/dev/null 2>"$dir/check.log" \
        || { cat "$dir/check.log" >&2; die "$v: wasmgate check failed"; }
    say "$v: starting under callgrind on 127.0.0.1:$port"
    "$VALGRIND" --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
        "$WASMGATE" run -c "$dir/gateway.toml" >"$dir/access.log" 2>"$dir/stderr.log" &
    pid=$!
    PIDS+=("$pid")
    # up to 2 min: plugins are compiled at start-up, slowly under valgrind
    if ! wait_for_line "$dir/stderr.log" "listening on http://" "$pid" 1200; then
        cat "$dir/stderr.log" >&2
        grep -q "failed to create memory pool mapping" "$dir/stderr.log" \
            && say "this valgrind ($VALGRIND) cannot host wasmtime's pooling allocator: see the top of $0"
        die "$v did not start"
    fi
    url="http://127.0.0.1:$port$(target_path "$v")"
    probe_target "$v" "$dir" "$url" 30 \
        || die "$v: the plugins did not run as configured (see above; $dir)"
    auth=()
    is_jwt "$v" && auth=(-H "$(auth_header "$v" "$dir")")
    [[ "$(curl -s -m 30 "${auth[@]}" "$url")" == hello ]] \
        || die "$v: $url was not served by the upstream ($dir)"
    wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "${extra[@]}" "$url" >"$dir/wrk-warmup.txt" 2>&1
    "$CG_CONTROL" -d "$pid" >/dev/null 2>&1 || die "callgrind_control -d failed for $v"
    wrk -t1 -c"$CONNECTIONS" -d"${MEASURE}s" "${extra[@]}" "$url" >"$dir/wrk.txt" 2>&1
    t0=$(date +%s.%N)
    "$CG_CONTROL" -d "$pid" >/dev/null 2>&1 || die "callgrind_control -d failed for $v"
    idle_rate=""
    if [[ "$IDLE" != 0 ]]; then
        sleep "$IDLE"
        t1=$(date +%s.%N)
        "$CG_CONTROL" -d "$pid" >/dev/null 2>&1
    fi
    kill -TERM "$pid"; wait "$pid" 2>/dev/null
    # dumps: callgrind.out.1 (start-up + warm-up), .2 (measured load), .3 (idle)
    ir=$(instructions "$dir/callgrind.out.2")
    req=$(requests_of "$dir/wrk.txt")
    [[ -n "$ir" && -n "$req" && "$req" != 0 ]] || die "$v: no instructions or no requests (see $dir)"
    rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$dir/wrk.txt")
    RES_IR[$v]=$ir; RES_REQ[$v]=$req
    RES_RATE[$v]=$(awk -v i="$ir" -v n="$req" 'BEGIN {printf "%.0f", i / n}')
    if [[ "$IDLE" != 0 && -f "$dir/callgrind.out.3" ]]; then
        idle_ir=$(instructions "$dir/callgrind.out.3")
        idle_rate=$(awk -v i="$idle_ir" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", i / (b - a)}')
        RES_IDLE[$v]=$idle_rate
        RES_NET[$v]=$(awk -v i="$ir" -v n="$req" -v r="$idle_rate" -v s="$MEASURE" \
            'BEGIN {printf "%.0f", (i - r * s) / n}')
    fi
    say "$v: $ir instructions / $req requests = ${RES_RATE[$v]} per request ($rps req/s under callgrind; idle ${idle_rate:-?} instr/s)"
    # per-function breakdown: callgrind_annotate 3.19 printed only __libc_start_main for these
    # dumps, so bench/callgrind_top.py reads the file itself
    top_args=(-n "${TOP_FILE_N:-60}" --per "$req" --inclusive)
    [[ "$v" != wasmgate && -n "${RES_REQ[wasmgate]:-}" ]] \
        && top_args+=(--base "$OUT/wasmgate/callgrind.out.2" --base-per "${RES_REQ[wasmgate]}")
    python3 "$ROOT/bench/callgrind_top.py" "${top_args[@]}" "$dir/callgrind.out.2" >"$dir/top.txt" 2>&1
    if ((TOP > 0)); then
        echo
        echo "== $v: top $TOP functions by own instructions per request (all of it in $dir/top.txt)"
        awk '/function \(own instructions\)/ {p = 1} p && NF == 0 {exit} p' "$dir/top.txt" \
            | sed -n "1,$((TOP + 1))p" | cut -c1-180
        if grep -q "this run minus baseline" "$dir/top.txt"; then
            echo
            echo "== $v: top $TOP increases against plain wasmgate, own instructions per request"
            awk '/this run minus baseline/ {p = 1} p && NF == 0 {exit} p' "$dir/top.txt" \
                | sed -n "1,$((TOP + 1))p" | cut -c1-180
        fi
    fi
done

echo
echo "valgrind: $("$VALGRIND" --version) ($VALGRIND); wrk -t1 -c$CONNECTIONS, ${WARMUP}s warm-up, ${MEASURE}s measured"
echo "wasmgate: $("$WASMGATE" --version 2>/dev/null), git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)"
echo
printf '| %-17s | %14s | %9s | %12s | %14s | %12s | %15s |\n' variant instructions requests "instr/req" "idle instr/s" "net instr/req" "net - wasmgate"
printf '|%s|%s|%s|%s|%s|%s|%s|\n' ------------------- ---------------: ----------: -------------: ---------------: -------------: ----------------:
for v in "${VARIANTS[@]}"; do
    base=${RES_NET[wasmgate]:-}
    delta=-
    [[ -n "$base" && -n "${RES_NET[$v]:-}" && "$v" != wasmgate ]] && delta=$((RES_NET[$v] - base))
    printf '| %-17s | %14s | %9s | %12s | %14s | %12s | %15s |\n' "$v" "${RES_IR[$v]}" "${RES_REQ[$v]}" \
        "${RES_RATE[$v]}" "${RES_IDLE[$v]:--}" "${RES_NET[$v]:--}" "$delta"
done
exit 0
