#!/usr/bin/env bash
# Many routes: what FEW (10) and MANY (10,000) routes cost at start-up, on a hot reload, in
# memory and per request. Issue 9's target: "10,000 routes cost less than 20% more CPU per
# request than 10, and load in under a second". A benchmark, not a test: it prints numbers and
# exits non-zero only when something fails to build or start, never because of the numbers.
#
#   bench/routes.sh                        # FEW=10 MANY=10000: load, callgrind, proxy
#   PARTS=load bench/routes.sh             # only the start-up / reload / idle RSS table
#   MANY=50000 PARTS="load callgrind" bench/routes.sh
#
# The configs are bench/lib.sh's routesN targets (routes_toml): no plugins, N named routes with
# distinct path prefixes and params, all to one upstream; per ten routes: seven plain
# `/svc{i}/items/{id}` (one of them the kind the load hits), one host-restricted, one
# catch-all `/svc{i}/users/{user}/orders/{*rest}` with a rewrite, one POST/PUT-only, and one
# with a header predicate on the pattern of the route before it. The measured request goes to
# `/svc{k}/items/42`, k two thirds down the list (bench/lib.sh's target_path).
#
# Parts (PARTS, in this order):
#   load       per route count, RUNS times each, best and median:
#                check ms   `wasmgate check -c FILE`: read, parse, validate, build the snapshot
#                           (router, metric series), exit
#                start ms   process start to the "listening on" log line (polled every 5 ms):
#                           what a restart with that config costs before it serves
#                reload ms  `POST /reload` on the admin API, curl's time_total: the answer comes
#                           when the reload has built and swapped the new snapshot (the same
#                           path as a file change or SIGHUP; docs/operations.md, Hot reload)
#              and once per route count: VmRSS idle after start, and after RUNS reloads
#   callgrind  bench/callgrind.sh routesFEW routesMANY: instructions per request (repeatable,
#              unlike CPU time on a shared VM); the ratio MANY/FEW is printed
#   proxy      TARGETS="routesFEW routesMANY" bench/proxy.sh: cpu us/req and RSS under wrk load
#
# Environment:
#   FEW, MANY    route counts                                   (default 10, 10000)
#   PARTS        space-separated subset of "load callgrind proxy" (default all three)
#   RUNS         repetitions of check / start / reload          (default 5)
#   SKIP_BUILD   1 = do not run cargo build                     (default 0)
#   KEEP_TMP     1 = keep the configs and logs                  (default 0)
#   The callgrind and proxy parts take their own settings (MEASURE, DURATION, ROUNDS, ...: see
#   bench/callgrind.sh and bench/proxy.sh); this script passes SKIP_BUILD=1 to them after its
#   own build. The gateway binary is $CARGO_TARGET_DIR/release/wasmgate (default target/).

set -uo pipefail

FEW=${FEW:-10}
MANY=${MANY:-10000}
PARTS=${PARTS:-load callgrind proxy}
RUNS=${RUNS:-5}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
WASMGATE="$(cargo_target_dir)/release/wasmgate"
PLUGIN_DIR=${PLUGIN_DIR:-$ROOT/target/wasm-plugins/wasm32-wasip2/release}
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

for part in $PARTS; do
    [[ " load callgrind proxy " == *" $part "* ]] || die "unknown part '$part' in PARTS (known: load callgrind proxy)"
done
is_routes "routes$FEW" && is_routes "routes$MANY" || die "FEW and MANY must be route counts (at least 1)"
for tool in curl awk; do command -v "$tool" >/dev/null 2>&1 || die "missing tool: $tool"; done

if [[ "$SKIP_BUILD" != 1 ]]; then
    say "cargo build --release -p wasmgate"
    (cd "$ROOT" && cargo build --release -p wasmgate) || die "cargo build failed"
fi
[[ -x "$WASMGATE" ]] || die "$WASMGATE not found"
selected_part() { [[ " $PARTS " == *" $1 "* ]]; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/wasmgate-routes.XXXXXX")
PIDS=()
USED_PORTS=""
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now_ms() { date +%s%3N; }
rss_mib() { awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' /proc/"$1"/status 2>/dev/null; }
# "best median" of numbers, one a line
best_median() { sort -n | awk '{v[NR] = $1} END {printf "%s %s", v[1], v[int((NR + 1) / 2)]}'; }

# ---------------------------------------------------------------- load: check, start, reload, RSS
declare -A LOAD_ROW
measure_load() { # route-count
    local n=$1 t="routes$1" dir="$TMP/routes$1" port admin pid t0 i checks=() starts=() reloads=()
    local rss_start rss_reload code ms
    mkdir -p "$dir"
    pick_port; port=$PORT
    pick_port; admin=$PORT
    # the upstream is never asked: these runs serve no request; admin on for POST /reload
    gateway_toml "$t" "$port" 9 | sed "s|^admin = \"off\"|admin = \"127.0.0.1:$admin\"|" >"$dir/gateway.toml"
    say "$t: $(grep -c '^\[\[routes\]\]' "$dir/gateway.toml") routes, $(wc -c <"$dir/gateway.toml") bytes of TOML"
    for i in $(seq "$RUNS"); do
        t0=$(now_ms)
        "$WASMGATE" check -c "$dir/gateway.toml" >"$dir/check.log" 2>&1 || { cat "$dir/check.log" >&2; die "$t: check failed"; }
        checks+=($(($(now_ms) - t0)))
    done
    for i in $(seq "$RUNS"); do
        t0=$(now_ms)
        "$WASMGATE" run -c "$dir/gateway.toml" >/dev/null 2>"$dir/stderr-$i.log" &
        pid=$!
        PIDS+=("$pid")
        while ! grep -q "listening on http://" "$dir/stderr-$i.log" 2>/dev/null; do
            kill -0 "$pid" 2>/dev/null || { cat "$dir/stderr-$i.log" >&2; die "$t did not start"; }
            sleep 0.005
        done
        starts+=($(($(now_ms) - t0)))
        if ((i < RUNS)); then
            kill -TERM "$pid"; wait "$pid" 2>/dev/null
        fi
    done
    # the last one stays up: idle RSS, then the reloads
    wait_for_line "$dir/stderr-$RUNS.log" "admin API on http://127.0.0.1:$admin" "$pid" 100 || true
    sleep 1
    rss_start=$(rss_mib "$pid")
    for i in $(seq "$RUNS"); do
        read -r code ms < <(curl -s -m 60 -o "$dir/reload-$i.json" -w '%{http_code} %{time_total}\n' \
            -X POST "http://127.0.0.1:$admin/reload" | awk '{printf "%s %.0f\n", $1, $2 * 1000}')
        [[ "$code" == 200 ]] || { cat "$dir/reload-$i.json" "$dir/stderr-$RUNS.log" >&2; die "$t: POST /reload answered $code"; }
        reloads+=("$ms")
    done
    sleep 1
    rss_reload=$(rss_mib "$pid")
    kill -TERM "$pid"; wait "$pid" 2>/dev/null
    LOAD_ROW[$n]="$(printf '%s\n' "${checks[@]}" | best_median) $(printf '%s\n' "${starts[@]}" | best_median) $(printf '%s\n' "${reloads[@]}" | best_median) $rss_start $rss_reload"
    say "$t: check/start/reload ms (best median): ${LOAD_ROW[$n]% * *}; rss $rss_start -> $rss_reload MiB"
}

if selected_part load; then
    measure_load "$FEW"
    measure_load "$MANY"
    echo
    echo "wasmgate: $(build_info "$WASMGATE"); $RUNS runs each, best / median"
    echo
    printf '| %8s | %17s | %17s | %17s | %13s | %16s |\n' routes "check ms" "start ms" "reload ms" "rss idle MiB" "after reloads"
    printf '|%s|%s|%s|%s|%s|%s|\n' ---------: ------------------: ------------------: ------------------: --------------: -----------------:
    for n in "$FEW" "$MANY"; do
        read -r cb cm sb sm rb rm r0 r1 <<<"${LOAD_ROW[$n]}"
        printf '| %8s | %8s / %6s | %8s / %6s | %8s / %6s | %13s | %16s |\n' "$n" "$cb" "$cm" "$sb" "$sm" "$rb" "$rm" "$r0" "$r1"
    done
    echo
fi

# ---------------------------------------------------------------- callgrind: instructions per request
if selected_part callgrind; then
    say "bench/callgrind.sh routes$FEW routes$MANY"
    SKIP_BUILD=1 "$ROOT/bench/callgrind.sh" "routes$FEW" "routes$MANY" | tee "$TMP/callgrind.txt"
    awk -v few="routes$FEW" -v many="routes$MANY" -F'|' '
        { gsub(/ /, "", $2); gsub(/ /, "", $7) }
        $2 == few { a = $7 } $2 == many { b = $7 }
        END { if (a > 0 && b > 0) printf "\nnet instructions per request: %s routes %d, %s routes %d: %+.1f %%\n",
              substr(few, 7), a, substr(many, 7), b, (b / a - 1) * 100 }' "$TMP/callgrind.txt"
fi

# ---------------------------------------------------------------- proxy: cpu us/req and RSS under load
if selected_part proxy; then
    say "TARGETS=\"routes$FEW routes$MANY\" bench/proxy.sh"
    SKIP_BUILD=1 TARGETS="routes$FEW routes$MANY" "$ROOT/bench/proxy.sh"
fi
exit 0
