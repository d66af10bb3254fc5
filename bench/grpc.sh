#!/usr/bin/env bash
# grpc-transcode benchmark: the gateway's CPU per request when the grpc-transcode plugin turns a
# small JSON call into a gRPC call, next to the same gateway passing native gRPC through without
# the plugin. The upstream is demo.v1.Items (demo-grpc/examples/serve.rs, tonic over h2c).
#
# This is a benchmark, not a test: it exits non-zero only when something fails to build or start
# (or a probe request gets a wrong answer), never because of the numbers.
#
#   bench/grpc.sh                                  # defaults: DURATION=10s CONNECTIONS=50 ROUNDS=2
#   ROUNDS=2 DURATION=8s bench/grpc.sh
#   TARGETS="transcode-h1 grpc-h2" bench/grpc.sh   # only the JSON/HTTP/1.1 and native gRPC rows
#
# Every call is demo.v1.Items/GetItem for item 3: request `{"id":"3"}` (10 bytes of JSON) or the
# protobuf 08 03 (2 bytes + the 5-byte gRPC prefix); response 176 bytes of JSON or a 47-byte
# message (+ 5-byte prefix, + grpc-status trailer).
#
# Targets (TARGETS, space- or comma-separated, measured in this order within each round):
#   transcode-h1  gateway WITH grpc-transcode; wrk, HTTP/1.1, POST /demo.v1.Items/GetItem with
#                 the JSON body (the plugin's fallback path)
#   grpc-h1       gateway WITHOUT plugins; wrk, HTTP/1.1, POST of the gRPC-framed protobuf body
#                 (content-type application/grpc), passed through to the h2c upstream as is
#   transcode-h2  gateway WITH grpc-transcode; h2load, h2c (prior knowledge), the JSON body
#   grpc-h2       gateway WITHOUT plugins; h2load, h2c, native gRPC (application/grpc,
#                 te: trailers, the framed protobuf body)
# The plugin's cost per request is transcode-hN minus grpc-hN (same client protocol, same
# load generator, same upstream call); the script prints those differences, and also
# transcode-h1 minus grpc-h2 (JSON over HTTP/1.1 vs native gRPC over h2c).
#
# Environment:
#   DURATION     measured run per target and round (wrk -d / h2load -D)   (default 10s)
#   CONNECTIONS  connections (wrk -c / h2load -c, one stream each)        (default 50)
#   ROUNDS       alternating rounds over the targets                      (default 2)
#   WARMUP       warm-up run per target before the rounds                 (default 2s; 0 to skip)
#   TARGETS      subset of the targets above                              (default: all four)
#   PLUGIN_DIR   where grpc_transcode.wasm is (default target/wasm-plugins/wasm32-wasip2/release)
#   PAUSE_IDLE   1 = SIGSTOP the gateway not under test during each run   (default 1)
#   MAX_LOAD     the 1-minute load average under which the machine counts as quiet (default 0.7)
#   IDLE_WAIT    seconds to wait for that before measuring anyway, with a warning (default 300)
#   SKIP_BUILD   1 = do not run cargo build (wasmgate, the serve example)  (default 0)
#   KEEP_TMP     1 = keep the temp dir (configs, logs, raw wrk/h2load output) (default 0)
#
# Layout (2+ cores): both gateways (workers = 1, one route "/{*rest}", upstream protocol "h2c")
# on core 0; the upstream (a current-thread tokio runtime) and wrk/h2load (one thread) on core 1.
# "gw cpu us/req" is the gateway's utime+stime (/proc/PID/stat, all threads) over the run divided
# by the requests completed; "up cpu us/req" the same for the upstream.

set -uo pipefail

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
ROUNDS=${ROUNDS:-2}
WARMUP=${WARMUP:-2s}
PAUSE_IDLE=${PAUSE_IDLE:-1}
MAX_LOAD=${MAX_LOAD:-0.7}
IDLE_WAIT=${IDLE_WAIT:-300}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}
ALL_TARGETS="transcode-h1 grpc-h1 transcode-h2 grpc-h2"
TARGETS=${TARGETS:-$ALL_TARGETS}
TARGETS=${TARGETS//,/ }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
# the binary `cargo build --release` writes (CARGO_TARGET_DIR is honoured, so a shared target dir
# does not leave the script running a stale binary)
WASMGATE="$(cargo_target_dir)/release/wasmgate"
SERVE="$(cargo_target_dir)/release/examples/serve"
PLUGIN_DIR=${PLUGIN_DIR:-$ROOT/target/wasm-plugins/wasm32-wasip2/release}

# ---------------------------------------------------------------- tools
missing=()
for tool in cargo wrk h2load curl awk getconf od; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "missing tools: ${missing[*]}" >&2
    for m in "${missing[@]}"; do
        case "$m" in
            wrk) echo "  apt-get install -y wrk" >&2 ;;
            h2load) echo "  apt-get install -y nghttp2-client" >&2 ;;
            curl) echo "  apt-get install -y curl" >&2 ;;
            cargo) echo "  install Rust: https://rustup.rs" >&2 ;;
            *) echo "  apt-get install -y gawk libc-bin coreutils   ($m)" >&2 ;;
        esac
    done
    exit 1
fi
have_taskset=1
command -v taskset >/dev/null 2>&1 || have_taskset=0

SELECTED=()
for t in $TARGETS; do
    [[ " $ALL_TARGETS " == *" $t "* ]] || die "unknown target '$t' in TARGETS (known: $ALL_TARGETS)"
    [[ " ${SELECTED[*]} " == *" $t "* ]] || SELECTED+=("$t")
done
((${#SELECTED[@]})) || die "TARGETS is empty"

CLK_TCK=$(getconf CLK_TCK)
NCPU=$(nproc)

# which gateway a target loads, its client protocol and its body
gateway_of() { case "$1" in transcode-*) echo transcode ;; *) echo plain ;; esac; }
is_h2() { [[ "$1" == *-h2 ]]; }
label_of() {
    case "$1" in
        transcode-h1) echo "grpc-transcode, JSON h1" ;;
        grpc-h1) echo "no plugin, gRPC body h1" ;;
        transcode-h2) echo "grpc-transcode, JSON h2c" ;;
        grpc-h2) echo "no plugin, gRPC h2c" ;;
    esac
}

# ---------------------------------------------------------------- build
if [[ "$SKIP_BUILD" != 1 ]]; then
    say "cargo build --release -p wasmgate; cargo build --release -p grpc-demo --example serve"
    (cd "$ROOT" && cargo build --release -p wasmgate && cargo build --release -p grpc-demo --example serve) \
        || die "cargo build failed"
fi
[[ -x "$WASMGATE" ]] || die "$WASMGATE not found (build it or unset SKIP_BUILD)"
[[ -x "$SERVE" ]] || die "$SERVE not found (cargo build --release -p grpc-demo --example serve)"
[[ -f "$PLUGIN_DIR/grpc_transcode.wasm" ]] \
    || die "$PLUGIN_DIR/grpc_transcode.wasm not found (built by cargo build; or set PLUGIN_DIR)"
BUILD_INFO=$(build_info "$WASMGATE")

# ---------------------------------------------------------------- pinning
pin_cores "load generator + upstream"

# ---------------------------------------------------------------- temp dir + cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/wasmgate-grpc-bench.XXXXXX")
PIDS=()
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

USED_PORTS=""
pick_port; UP_PORT=$PORT
declare -A GW_PORT GW_PID
pick_port; GW_PORT[transcode]=$PORT
pick_port; GW_PORT[plain]=$PORT

# ---------------------------------------------------------------- request bodies
# GetItemRequest { id: 3 }: field 1, varint => 08 03; gRPC prefix: not compressed, length 2
printf '\x00\x00\x00\x00\x02\x08\x03' >"$TMP/get-item.grpc"
printf '{"id":"3"}' >"$TMP/get-item.json"
cat >"$TMP/json.lua" <<'EOF'
wrk.method = "POST"
wrk.path = "/demo.v1.Items/GetItem"
wrk.body = '{"id":"3"}'
wrk.headers["Content-Type"] = "application/json"
EOF
cat >"$TMP/grpc.lua" <<'EOF'
wrk.method = "POST"
wrk.path = "/demo.v1.Items/GetItem"
wrk.body = "\0\0\0\0\2\8\3"
wrk.headers["Content-Type"] = "application/grpc"
wrk.headers["TE"] = "trailers"
EOF

# ---------------------------------------------------------------- upstream
say "starting demo.v1.Items (tonic, h2c) on 127.0.0.1:$UP_PORT"
"${LOAD_PIN[@]}" "$SERVE" "127.0.0.1:$UP_PORT" "$TMP/api.pb" >"$TMP/upstream.log" 2>&1 &
UP_PID=$!
PIDS+=("$UP_PID")
wait_for_line "$TMP/upstream.log" "^listening on" "$UP_PID" 100 \
    || { cat "$TMP/upstream.log" >&2; die "the upstream did not start"; }

# ---------------------------------------------------------------- gateways
gateway_toml() { # transcode|plain port
    # admin off: the admin API's default port would be taken by the first gateway only
    printf '[server]\nlisten = "127.0.0.1:%s"\nadmin = "off"\nworkers = 1\n\n' "$2"
    printf '[upstreams.items]\ntargets = [{ addr = "127.0.0.1:%s" }]\nprotocol = "h2c"\n\n' "$UP_PORT"
    [[ "$1" == transcode ]] && printf '[plugins.grpc]\npath = "%s"\n\n' "$PLUGIN_DIR/grpc_transcode.wasm"
    printf '[[routes]]\npath = "/{*rest}"\nupstream = "items"\n'
    [[ "$1" == transcode ]] && printf '%s\n' \
        'plugins = [{ use = "grpc", config = { descriptors = "@base64file:'"$TMP"'/api.pb", services = ["demo.v1.Items"] } }]'
    return 0
}
start_gateway() { # transcode|plain
    local g=$1 dir="$TMP/gw-$1" pid
    mkdir -p "$dir"
    gateway_toml "$g" "${GW_PORT[$g]}" >"$dir/gateway.toml"
    say "starting wasmgate ($g) on 127.0.0.1:${GW_PORT[$g]}"
    "${PROXY_PIN[@]}" "$WASMGATE" run -c "$dir/gateway.toml" >"$dir/access.log" 2>"$dir/stderr.log" &
    pid=$!
    GW_PID[$g]=$pid
    PIDS+=("$pid")
    # the plugin is compiled at start-up: allow up to 60 s
    wait_for_line "$dir/stderr.log" "listening on http://" "$pid" 600 \
        || { cat "$dir/gateway.toml" "$dir/stderr.log" >&2; die "wasmgate ($g) did not start"; }
}
need_transcode=0; need_plain=0
for t in "${SELECTED[@]}"; do
    [[ $(gateway_of "$t") == transcode ]] && need_transcode=1 || need_plain=1
done
((need_transcode)) && start_gateway transcode
((need_plain)) && start_gateway plain

# ---------------------------------------------------------------- probes
# Each target's request, once through curl with the same protocol: the right answer or stop.
probe() { # target
    local t=$1 url="http://127.0.0.1:${GW_PORT[$(gateway_of "$1")]}/demo.v1.Items/GetItem" proto out
    proto=--http1.1
    is_h2 "$t" && proto=--http2-prior-knowledge
    case "$t" in
        transcode-*)
            out=$(curl -s -m 5 "$proto" -w '\n%{http_code}' -H 'content-type: application/json' \
                --data-binary @"$TMP/get-item.json" "$url")
            [[ "$out" == *'"name":"Rustproof Wrench"'* && "${out##*$'\n'}" == 200 ]] && return 0
            ;;
        grpc-*)
            # the whole response: headers, the 52-byte framed Item, trailers (h2c: grpc-status 0)
            curl -s -m 5 "$proto" -D "$TMP/probe-$t.headers" -o "$TMP/probe-$t.body" \
                -H 'content-type: application/grpc' -H 'te: trailers' --data-binary @"$TMP/get-item.grpc" "$url"
            out="$(tr -d '\r' <"$TMP/probe-$t.headers"; echo "body: $(wc -c <"$TMP/probe-$t.body") bytes")"
            if grep -qi '^content-type: application/grpc$' <<<"$out" && grep -q '^body: 52 bytes$' <<<"$out" \
                && LC_ALL=C grep -q 'Rustproof Wrench' "$TMP/probe-$t.body" \
                && { ! is_h2 "$t" || grep -qi '^grpc-status: 0$' <<<"$out"; }; then
                return 0
            fi
            ;;
    esac
    echo "$t: unexpected answer:" >&2
    printf '%s\n' "$out" >&2
    return 1
}
for t in "${SELECTED[@]}"; do
    probe "$t" || die "the probe request of $t failed (see above)"
done
say "probes answered as expected"

# ---------------------------------------------------------------- measurement helpers
focus() { # target: PAUSE_IDLE=1 stops the other gateway during the run
    ((PAUSE_IDLE)) || return 0
    local g
    for g in "${!GW_PID[@]}"; do
        if [[ "$g" == $(gateway_of "$1") ]]; then kill -CONT "${GW_PID[$g]}"; else kill -STOP "${GW_PID[$g]}"; fi
    done 2>/dev/null
    sleep 0.2
}
load_cmd() { # target duration -> LOAD (the wrk or h2load command line)
    local t=$1 d=$2 url="http://127.0.0.1:${GW_PORT[$(gateway_of "$1")]}"
    case "$t" in
        transcode-h1) LOAD=(wrk -t1 -c"$CONNECTIONS" -d"$d" --latency -s "$TMP/json.lua" "$url/") ;;
        grpc-h1) LOAD=(wrk -t1 -c"$CONNECTIONS" -d"$d" --latency -s "$TMP/grpc.lua" "$url/") ;;
        transcode-h2) LOAD=(h2load -t1 -c"$CONNECTIONS" -m1 -D "$d" -H 'content-type: application/json'
                           -d "$TMP/get-item.json" "$url/demo.v1.Items/GetItem") ;;
        grpc-h2) LOAD=(h2load -t1 -c"$CONNECTIONS" -m1 -D "$d" -H 'content-type: application/grpc'
                      -H 'te: trailers' -d "$TMP/get-item.grpc" "$url/demo.v1.Items/GetItem") ;;
    esac
}

RESULTS=()
run_load() { # target round
    local t=$1 round=$2 gw out reqs rps mean p50 p99 errs cpu up b0 b1 u0 u1 o0 o1 m0 m1 t0 t1 load_s other LOAD
    gw=${GW_PID[$(gateway_of "$t")]}
    kill -0 "$gw" "$UP_PID" 2>/dev/null || die "a gateway or the upstream is no longer running"
    focus "$t"
    load_cmd "$t" "$DURATION"
    m0=$(machine_busy); t0=$(date +%s.%N)
    b0=$(ticks "$gw"); u0=$(ticks "$UP_PID")
    { TIMEFORMAT='%3U %3S'; time "${LOAD_PIN[@]}" "${LOAD[@]}" >"$TMP/out-$t-$round.txt" 2>&1; } 2>"$TMP/time-$t-$round.txt"
    b1=$(ticks "$gw"); u1=$(ticks "$UP_PID")
    t1=$(date +%s.%N); m1=$(machine_busy)
    out=$(<"$TMP/out-$t-$round.txt")
    load_s=$(awk '{print $1 + $2}' "$TMP/time-$t-$round.txt")
    # CPU used by anything but the load generator, the upstream and the gateway under test, as %
    # of all cores
    other=$(awk -v m=$((m1 - m0)) -v o=$((b1 - b0 + u1 - u0)) -v w="$load_s" -v hz="$CLK_TCK" \
        -v t="$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" -v n="$NCPU" \
        'BEGIN { x = (m / hz - o / hz - w) / (t * n) * 100; if (x < 0) x = 0; printf "%.0f", x }')
    if is_h2 "$t"; then
        # requests: 80000 total, 80050 started, 80000 done, 80000 succeeded, 0 failed, 0 errored, 0 timeout
        reqs=$(awk '/^requests:/ {print $6; exit}' <<<"$out")
        rps=$(awk '/^finished in/ {printf "%.0f", $4; exit}' <<<"$out")
        errs=$(awk '/^requests:/ {n += $10 + $12 + $14} /^status codes:/ {n += $5 + $7 + $9} END {print n + 0}' <<<"$out")
        mean=$(awk '/^time for request:/ {print $6; exit}' <<<"$out")
        p50=-; p99=-
    else
        reqs=$(awk '/requests in/ {print $1; exit}' <<<"$out")
        rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' <<<"$out")
        errs=$(awk '/Non-2xx or 3xx responses:/ {n += $NF} /Socket errors:/ {
            for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) n += $i } END {print n + 0}' <<<"$out")
        mean=$(awk '$1 == "Latency" {print $2; exit}' <<<"$out")
        p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
        p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    fi
    if [[ -z "$reqs" || -z "$rps" || "$reqs" == 0 ]]; then
        say "the load against $t failed:"
        printf '%s\n' "$out" >&2
        RESULTS+=("$round|$t|-|-|-|-|-|-|-|-")
        return
    fi
    mean=$(to_ms "$mean")
    cpu=$(awk -v d=$((b1 - b0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN {printf "%.2f", d / hz * 1e6 / n}')
    up=$(awk -v d=$((u1 - u0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN {printf "%.2f", d / hz * 1e6 / n}')
    printf '   %-26s round %s: %7s req/s  mean %6s ms  p50 %6s  p99 %6s  gw %6s us/req  up %6s us/req  errors %s  other %s%%\n' \
        "$(label_of "$t")" "$round" "$rps" "$mean" "$p50" "$p99" "$cpu" "$up" "$errs" "$other" >&2
    RESULTS+=("$round|$t|$rps|$mean|$p50|$p99|$cpu|$up|$errs|$other")
}

load1() { awk '{print $1}' /proc/loadavg; }
quiet() { awk -v l="$(load1)" -v m="$MAX_LOAD" 'BEGIN {exit !(l < m)}'; }

# ---------------------------------------------------------------- runs
waited=0
until quiet || ((waited >= IDLE_WAIT)); do
    ((waited == 0)) && say "1-minute load $(load1) >= $MAX_LOAD: waiting up to ${IDLE_WAIT}s for a quiet machine (IDLE_WAIT)"
    sleep 10; waited=$((waited + 10))
done
LOAD_BEFORE=$(load1)
quiet || say "WARNING: 1-minute load is still $LOAD_BEFORE; numbers will be skewed"
if [[ "$WARMUP" != 0 ]]; then
    say "warm-up ($WARMUP each, not recorded)"
    for t in "${SELECTED[@]}"; do
        focus "$t"
        load_cmd "$t" "$WARMUP"
        "${LOAD_PIN[@]}" "${LOAD[@]}" >/dev/null 2>&1
    done
fi
say "measuring: $CONNECTIONS connections, $DURATION per run, $ROUNDS round(s)"
for round in $(seq "$ROUNDS"); do
    for t in "${SELECTED[@]}"; do run_load "$t" "$round"; done
done
LOAD_AFTER=$(load1)

# ---------------------------------------------------------------- tables
echo
echo "demo.v1.Items/GetItem (item 3); $CONNECTIONS connections, $DURATION per run; wrk -t1 (HTTP/1.1), h2load -t1 -m1 (h2c)"
echo "$NCPU CPU(s), CLK_TCK=$CLK_TCK; $PIN_NOTE; 1-minute load $LOAD_BEFORE before, $LOAD_AFTER after"
echo "wasmgate: $BUILD_INFO"
((PAUSE_IDLE)) && echo "the gateway not under test was paused (SIGSTOP) during each run"
echo
printf '| %-5s | %-26s | %7s | %7s | %7s | %7s | %13s | %13s | %6s | %7s |\n' \
    round target "req/s" "mean ms" "p50 ms" "p99 ms" "gw cpu us/req" "up cpu us/req" errors "other %"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' ------- ---------------------------- --------: \
    --------: --------: --------: --------------: --------------: -------: --------:
declare -A CPU_OF
for row in "${RESULTS[@]}"; do
    IFS='|' read -r round t rps mean p50 p99 cpu up errs other <<<"$row"
    CPU_OF[$round.$t]=$cpu
    printf '| %-5s | %-26s | %7s | %7s | %7s | %7s | %13s | %13s | %6s | %7s |\n' \
        "$round" "$(label_of "$t")" "$rps" "$mean" "$p50" "$p99" "$cpu" "$up" "$errs" "$other"
done
echo
echo "gw cpu us/req: the gateway's utime+stime (all threads) / completed requests; up: the upstream's."
echo "p50/p99: wrk only (h2load reports no percentiles). errors: non-2xx + socket errors (h2load:"
echo "failed + errored + timeout + non-2xx). other %: CPU used during the run by anything but the"
echo "load generator, the upstream and the gateway under test, as % of all cores."

# plugin cost: differences of the gateway's cpu us/req within a round
PAIRS=()
selected transcode-h1 && selected grpc-h1 && PAIRS+=("transcode-h1:grpc-h1")
selected transcode-h2 && selected grpc-h2 && PAIRS+=("transcode-h2:grpc-h2")
selected transcode-h1 && selected grpc-h2 && PAIRS+=("transcode-h1:grpc-h2")
if ((${#PAIRS[@]})); then
    echo
    echo "grpc-transcode's cost: gw cpu us/req of the plugin row minus the no-plugin row, same round."
    echo
    printf '| %-5s | %-52s | %10s |\n' round "plugin row - no-plugin row" "us/req"
    printf '|%s|%s|%s|\n' ------- ------------------------------------------------------ -----------:
    declare -A SUM CNT
    for round in $(seq "$ROUNDS"); do
        for pair in "${PAIRS[@]}"; do
            a=${CPU_OF[$round.${pair%%:*}]:--}; b=${CPU_OF[$round.${pair##*:}]:--}
            if [[ "$a" == - || "$b" == - ]]; then d=-; else
                d=$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f", a - b}')
                SUM[$pair]=$(awk -v s="${SUM[$pair]:-0}" -v d="$d" 'BEGIN {print s + d}')
                CNT[$pair]=$((${CNT[$pair]:-0} + 1))
            fi
            printf '| %-5s | %-52s | %10s |\n' "$round" \
                "$(label_of "${pair%%:*}") - $(label_of "${pair##*:}")" "$d"
        done
    done
    for pair in "${PAIRS[@]}"; do
        ((${CNT[$pair]:-0})) || continue
        printf '| %-5s | %-52s | %10s |\n' mean "$(label_of "${pair%%:*}") - $(label_of "${pair##*:}")" \
            "$(awk -v s="${SUM[$pair]}" -v c="${CNT[$pair]}" 'BEGIN {printf "%.2f", s / c}')"
    done
    echo
    echo "Same client protocol (h1 - h1, h2c - h2c): the plugin (JSON -> protobuf, protobuf -> JSON,"
    echo "the WebAssembly calls) plus the request and response buffering it asks for, minus the"
    echo "trailers and framing that pass-through forwards. JSON h1 - gRPC h2c also includes the"
    echo "difference between the two client protocols."
fi
exit 0
