#!/usr/bin/env bash
# Process and measurement helpers shared by the bench scripts (sourced; they expect ROOT, TMP,
# KEEP_TMP, PIDS, USED_PORTS and SELECTED to be set by the script).

say() { printf '==> %s\n' "$*" >&2; }

die() { printf 'error: %s\n' "$*" >&2; exit 1; }

selected() { [[ " ${SELECTED[*]} " == *" $1 "* ]]; }

cleanup() {
    local pid
    # "|| true": the scripts may run with set -e, and a process that is already gone must not
    # end the clean-up of the others
    for pid in "${PIDS[@]}"; do
        kill -CONT "$pid" 2>/dev/null || true   # a paused (stopped) process would not act on TERM
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ "$KEEP_TMP" == 1 ]]; then
        say "kept $TMP"
    else
        rm -rf "$TMP"
    fi
}

# cargo's target directory: CARGO_TARGET_DIR when set (relative to ROOT, where the scripts run
# cargo), else ROOT/target. The plugins are not under it: host/build.rs always puts them in
# ROOT/target/wasm-plugins.
cargo_target_dir() {
    local d=${CARGO_TARGET_DIR:-target}
    [[ "$d" == /* ]] || d="$ROOT/$d"
    echo "$d"
}

# ---------------------------------------------------------------- ports
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_port() { # -> sets PORT (no subshell, so USED_PORTS is remembered)
    # Below the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768-60999 by default):
    # a port in it can be taken by any outgoing connection (wrk's, the proxies' to the upstream)
    # between this check and the server's bind, which failed a run with "Address already in use".
    local p low
    low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    for _ in $(seq 200); do
        p=$((10000 + RANDOM % (low - 10000)))
        [[ " $USED_PORTS " == *" $p "* ]] && continue
        port_in_use "$p" && continue
        USED_PORTS="$USED_PORTS $p"
        PORT=$p
        return 0
    done
    die "no free port found"
}

wait_for_line() { # file pattern pid tries -> 0 once file has a line matching pattern; 1 when
    # pid has exited or tries (0.1 s apart) ran out first
    local file=$1 pattern=$2 pid=$3 tries=$4
    for _ in $(seq "$tries"); do
        grep -q "$pattern" "$file" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    grep -q "$pattern" "$file" 2>/dev/null
}

proc_ticks() { # awk-expression pids... -> the expression over /proc/PID/stat, summed (clock ticks)
    local expr=$1 total=0 pid rest
    shift
    for pid in "$@"; do
        # field 2 (comm) may contain spaces; cut everything up to the last ')'
        rest=$(sed 's/^.*) //' /proc/"$pid"/stat 2>/dev/null) || continue
        # after comm: field 3 is state => utime (14) and stime (15) are items 12 and 13
        total=$((total + $(awk "{print $expr}" <<<"$rest")))
    done
    echo "$total"
}

ticks() { proc_ticks '$12 + $13' "$@"; }   # pids... -> utime+stime
sys_ticks() { proc_ticks '$13' "$@"; }     # pids... -> stime: the kernel's share

# whole-machine busy clock ticks since boot (user+nice+system+irq+softirq+steal)
machine_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }

# latency string from wrk ("812.00us", "1.23ms", "1.01s") -> milliseconds
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /m$/) n *= 60000; else if (v ~ /s$/) n *= 1000
        printf "%.3f", n }'
}

# "wasmgate VERSION, git HASH" (+ a note when host/ or plugins/ have uncommitted changes)
build_info() { # wasmgate binary
    local info
    info="$("$1" --version 2>/dev/null)"
    if command -v git >/dev/null 2>&1 && git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
        info="$info, git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)"
        [[ -n "$(git -C "$ROOT" status --porcelain -- host plugins Cargo.toml Cargo.lock 2>/dev/null)" ]] \
            && info="$info + uncommitted changes in host/ or plugins/"
    fi
    echo "$info"
}

# The gateway under test on core 0, the load generator and upstream on core 1 (with 2+ cores
# and taskset): sets PROXY_PIN, LOAD_PIN and PIN_NOTE.
pin_cores() { # what-runs-on-core-1
    PROXY_PIN=()
    LOAD_PIN=()
    if ((have_taskset)) && ((NCPU >= 2)); then
        PROXY_PIN=(taskset -c 0)
        LOAD_PIN=(taskset -c 1)
        PIN_NOTE="proxy on core 0; $1 on core 1"
    else
        PIN_NOTE="not pinned ($NCPU core(s)$( ((have_taskset)) || echo ', no taskset'))"
    fi
    say "pinning: $PIN_NOTE"
}
