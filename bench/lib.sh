# shellcheck shell=bash
# The wasmgate targets shared by bench/proxy.sh and bench/callgrind.sh (sourced by both): their
# gateway configs, key material and tokens, the extra wrk/curl arguments they need, and the
# start-up probe that proves their plugins run.
#
# The sourcing script sets PLUGIN_DIR and ROOT and defines die(). Each target gets its own
# directory (DIR below) for its gateway.toml and whatever its config refers to.
#
#   plugin1            first_plugin (reads x-block, sets x-hello)
#   chain3             three test_plugins in tag mode (a, b, c)
#   jwt-hs256          jwt, HS256 with a 38-byte secret, issuer, claims_to_headers sub -> x-user-id;
#                      wrk sends one token, so after the first request per instance it measures
#                      the verified-token cache (plugins/jwt/src/cache.rs), not a signature check
#   jwt-rs256          jwt, RS256 against a JWKS made from plugins/jwt/tests/fixtures/rsa-a.pem
#                      (kid "bench-a"), time_limit = "50ms"; one token, so also the cached path
#   jwt-rs256-nocache  the same config; wrk (bench/jwt-tokens.lua) sends JWT_TOKENS distinct
#                      tokens in turn, so (nearly) every request is a cache miss and pays an RS256
#                      signature check. Each instance keeps 256 tokens: with JWT_TOKENS = N at
#                      most 256/N of the requests can hit (N >= 2000 keeps that under 13 %).
#   headers            headers: request set x-client = {client_ip}, x-trace = {request_id};
#                      response remove server, set x-served-by = wasmgate
#   chain              the whole policy chain on one route: jwt-hs256's jwt (plus
#                      claims_to_context sub -> user_id), then headers' headers config, and a
#                      rate_limit keyed on ctx:user_id at 1,000,000/s (burst 1,000,000): far
#                      above any load here, so it is checked on every request and never answers 429
#   *-pr               (plugin1-pr, chain3-pr) the same with isolation = "per-request"
#   routesN            (routes10, routes10000, ...) no plugins, N generated routes instead of one
#                      (routes_toml below; bench/routes.sh): the load requests target_path, a
#                      route two thirds down the list
#
# Every target but the *-pr ones uses isolation = "pooled".

BENCH_PLUGIN_TARGETS="plugin1 plugin1-pr chain3 chain3-pr jwt-hs256 jwt-rs256 jwt-rs256-nocache headers chain"
JWT_TOKENS=${JWT_TOKENS:-2000}
JWT_SECRET="wasmgate-bench-hs256-secret-0123456789"   # 38 bytes; the plugin wants >= 32
JWT_ISSUER="wasmgate-bench"
JWT_RSA_KEY="$ROOT/plugins/jwt/tests/fixtures/rsa-a.pem"
JWT_KID="bench-a"
JWT_EXP=4102444800                                      # 2100-01-01

is_plugin_target() { [[ " $BENCH_PLUGIN_TARGETS " == *" $1 "* ]]; }
is_routes() { [[ "$1" =~ ^routes[0-9]+$ ]] && ((${1#routes} > 0)); }
is_wasmgate() { [[ "$1" == wasmgate ]] || is_plugin_target "$1" || is_routes "$1"; }
# a known target name (ALL is the script's list of fixed names): routesN takes any N
known_target() { [[ " $2 " == *" $1 "* ]] || is_routes "$1"; }
# the targets whose requests need a jwt token
is_jwt() { [[ "$1" == jwt-* || "$1" == chain ]]; }
# how many plugins a target chains (for the "per plugin" column)
plugin_count() { case "$1" in chain3*) echo 3 ;; chain) echo 2 ;; *) echo 1 ;; esac; }
# the .wasm files a target needs in PLUGIN_DIR (space-separated)
plugin_wasm() {
    case "$1" in
        plugin1*) echo first_plugin.wasm ;;
        chain3*) echo test_plugins.wasm ;;
        jwt-*) echo jwt.wasm ;;
        headers) echo headers.wasm ;;
        chain) echo jwt.wasm headers.wasm ;;
    esac
}

label_of() {
    case "$1" in
        upstream) echo "upstream (direct)" ;;
        nginx) echo "nginx proxy" ;;
        envoy) echo "envoy proxy" ;;
        envoy-wasm) echo "envoy + wasm filter" ;;
        wasmgate) echo "wasmgate" ;;
        plugin1) echo "wasmgate +1 pooled" ;;
        plugin1-pr) echo "wasmgate +1 per-req" ;;
        chain3) echo "wasmgate +3 pooled" ;;
        chain3-pr) echo "wasmgate +3 per-req" ;;
        jwt-hs256) echo "wasmgate +jwt HS256" ;;
        jwt-rs256) echo "wasmgate +jwt RS256" ;;
        jwt-rs256-nocache) echo "wasmgate +jwt RS256 miss" ;;
        headers) echo "wasmgate +headers" ;;
        chain) echo "wasmgate jwt+hdrs+limit" ;;
        routes*) echo "wasmgate ${1#routes} routes" ;;
    esac
}

# The routes of routesN: N distinct path prefixes with params, all to upstream "backend", in
# groups of ten (by i % 10): 0 2 4 6 8 plain `/svc{i}/items/{id}`; 1 the same (the kind the
# load hits); 3 the same restricted to host svc{i}.example.com; 5 a catch-all
# `/svc{i}/users/{user}/orders/{*rest}` with a rewrite; 7 POST/PUT only; 9 route i-1's pattern
# with a header predicate (x-tenant). Every route is named (its own metric series).
routes_toml() { # N
    awk -v n="$1" 'BEGIN {
        for (i = 0; i < n; i++) {
            k = i % 10
            printf "[[routes]]\nname = \"r%d\"\nupstream = \"backend\"\n", i
            if (k == 5) {
                printf "path = \"/svc%d/users/{user}/orders/{*rest}\"\nrewrite = \"/orders/{user}/{rest}\"\n", i
            } else {
                printf "path = \"/svc%d/items/{id}\"\n", (k == 9 ? i - 1 : i)
            }
            if (k == 3) printf "host = \"svc%d.example.com\"\n", i
            if (k == 7) printf "methods = [\"POST\", \"PUT\"]\n"
            if (k == 9) printf "headers = { \"x-tenant\" = \"t%d\" }\n", i
            printf "\n"
        }
    }'
}
# the route routesN's load hits: the last plain one (i % 10 == 1) in the first two thirds
routes_target_index() { # N
    local n=$1 i
    i=$((n * 2 / 3))
    while ((i > 1 && i % 10 != 1)); do i=$((i - 1)); done
    echo "$i"
}
# the path a target's load and probes request
target_path() {
    if is_routes "$1"; then echo "/svc$(routes_target_index "${1#routes}")/items/42"; else echo /; fi
}

# plugins_toml target -> the [plugins.*] table; route_plugins target -> the route's plugin list
plugins_toml() {
    local isolation=pooled
    [[ "$1" == *-pr ]] && isolation=per-request
    case "$1" in
        plugin1*) printf '[plugins.hello]\npath = "%s"\nisolation = "%s"\n' \
            "$PLUGIN_DIR/first_plugin.wasm" "$isolation" ;;
        chain3*) printf '[plugins.t]\npath = "%s"\nisolation = "%s"\n' \
            "$PLUGIN_DIR/test_plugins.wasm" "$isolation" ;;
        jwt-hs256) printf '[plugins.jwt]\npath = "%s"\nisolation = "%s"\n' \
            "$PLUGIN_DIR/jwt.wasm" "$isolation" ;;
        # RSA verification takes about 1 ms in WebAssembly (docs/first-party-plugins.md, Cost)
        jwt-rs256*) printf '[plugins.jwt]\npath = "%s"\nisolation = "%s"\ntime_limit = "50ms"\n' \
            "$PLUGIN_DIR/jwt.wasm" "$isolation" ;;
        headers) printf '[plugins.headers]\npath = "%s"\nisolation = "%s"\n' \
            "$PLUGIN_DIR/headers.wasm" "$isolation" ;;
        chain) printf '[plugins.jwt]\npath = "%s"\nisolation = "%s"\n\n[plugins.headers]\npath = "%s"\nisolation = "%s"\n' \
            "$PLUGIN_DIR/jwt.wasm" "$isolation" "$PLUGIN_DIR/headers.wasm" "$isolation" ;;
    esac
}
HEADERS_CONFIG='request = { set = { x-client = "{client_ip}", x-trace = "{request_id}" } }, response = { remove = ["server"], set = { x-served-by = "wasmgate" } }'
route_plugins() {
    local tag='{ use = "t", config = { mode = "tag", name = "%s" } }'
    case "$1" in
        plugin1*) echo 'plugins = [{ use = "hello", config = { header = "x-hello", value = "world" } }]' ;;
        chain3*) printf "plugins = [$tag, $tag, $tag]\n" a b c ;;
        jwt-hs256) printf 'plugins = [{ use = "jwt", config = { algorithms = ["HS256"], secret = "%s", issuer = "%s", claims_to_headers = { sub = "x-user-id" } } }]\n' \
            "$JWT_SECRET" "$JWT_ISSUER" ;;
        # the JWKS is written next to gateway.toml; @file: paths are relative to the config file
        jwt-rs256*) printf 'plugins = [{ use = "jwt", config = { algorithms = ["RS256"], jwks = "@file:jwks.json", issuer = "%s", claims_to_headers = { sub = "x-user-id" } } }]\n' \
            "$JWT_ISSUER" ;;
        headers) echo "plugins = [{ use = \"headers\", config = { $HEADERS_CONFIG } }]" ;;
        # the limit keys on the user the jwt plugin found, so it runs after the plugins' request
        # phase (docs/config.md, Rate limits); all of wrk's requests carry one user: one bucket
        chain)
            echo 'rate_limit = { rate = "1000000/s", burst = 1000000, key = "ctx:user_id" }'
            printf 'plugins = [{ use = "jwt", config = { algorithms = ["HS256"], secret = "%s", issuer = "%s", claims_to_headers = { sub = "x-user-id" }, claims_to_context = { sub = "user_id" } } }, { use = "headers", config = { %s } }]\n' \
                "$JWT_SECRET" "$JWT_ISSUER" "$HEADERS_CONFIG" ;;
    esac
}
# a response header that proves the plugins ran: first_plugin sets x-hello; in the tag chain,
# plugin a sets x-ctx-a in the response phase from a context value set in the request phase; the
# headers plugin sets x-served-by. (jwt sets no response header: see probe_target.)
probe_header() {
    case "$1" in
        plugin1*) echo "x-hello: world" ;;
        chain3*) echo "x-ctx-a: yes" ;;
        headers | chain) echo "x-served-by: wasmgate" ;;
    esac
}

gateway_toml() { # target port upstream-port -> the whole config (workers = 1, one route)
    # admin off: the admin API's default port would be taken by the first gateway only
    printf '[server]\nlisten = "127.0.0.1:%s"\nadmin = "off"\nworkers = 1\n\n' "$2"
    printf '[upstreams.backend]\ntargets = [{ addr = "127.0.0.1:%s" }]\n\n' "$3"
    if is_routes "$1"; then
        routes_toml "${1#routes}"
        return
    fi
    plugins_toml "$1"
    printf '\n[[routes]]\npath = "/{*rest}"\nupstream = "backend"\n'
    route_plugins "$1"
}

# ---------------------------------------------------------------- tokens (openssl)
b64url() { # stdin -> base64url without padding
    local s
    s=$(base64 -w0) || return 1
    s=${s//+/-}; s=${s//\//_}
    printf '%s' "${s//=/}"
}
hex_b64url() { # hex digits -> their bytes in base64url
    local hex=$1
    ((${#hex} % 2)) && hex="0$hex"
    # shellcheck disable=SC2059
    printf "$(sed 's/../\\x&/g' <<<"$hex")" | b64url
}
jwt_token() { # HS256|RS256 payload-json -> a signed token
    local alg=$1 header input sig
    case "$alg" in
        HS256) header='{"alg":"HS256","typ":"JWT"}' ;;
        RS256) header='{"alg":"RS256","typ":"JWT","kid":"'"$JWT_KID"'"}' ;;
    esac
    input="$(printf '%s' "$header" | b64url).$(printf '%s' "$2" | b64url)"
    case "$alg" in
        HS256) sig=$(printf '%s' "$input" | openssl dgst -sha256 -hmac "$JWT_SECRET" -binary | b64url) ;;
        RS256) sig=$(printf '%s' "$input" | openssl dgst -sha256 -sign "$JWT_RSA_KEY" -binary | b64url) ;;
    esac
    [[ -n "$sig" ]] || return 1
    printf '%s.%s\n' "$input" "$sig"
}
# base64url in awk (LC_ALL=C, POSIX awk): b64url_hex(hex digits), b64url_str(ASCII text)
B64_AWK='
function b64url_bytes(b, n,    i, v, out, A) {
    A = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    out = ""
    for (i = 1; i <= n; i += 3) {
        v = b[i] * 65536 + (i + 1 <= n ? b[i + 1] : 0) * 256 + (i + 2 <= n ? b[i + 2] : 0)
        out = out substr(A, int(v / 262144) + 1, 1) substr(A, int(v / 4096) % 64 + 1, 1)
        if (i + 1 <= n) out = out substr(A, int(v / 64) % 64 + 1, 1)
        if (i + 2 <= n) out = out substr(A, v % 64 + 1, 1)
    }
    return out
}
function b64url_hex(h,    b, i, n) {
    h = tolower(h); n = 0
    for (i = 1; i < length(h); i += 2)
        b[++n] = (index("0123456789abcdef", substr(h, i, 1)) - 1) * 16 + index("0123456789abcdef", substr(h, i + 1, 1)) - 1
    return b64url_bytes(b, n)
}
function b64url_str(s,    b, i, c) {
    if (!ORD_READY) { for (i = 32; i < 127; i++) ORD[sprintf("%c", i)] = i; ORD_READY = 1 }
    for (i = 1; i <= length(s); i++) b[i] = ORD[substr(s, i, 1)]
    return b64url_bytes(b, length(s))
}'
jwt_rs256_tokens() { # count dir -> that many distinct RS256 tokens (jti 1..count), one a line
    local n=$1 dir=$2 input
    # the signing inputs, one awk for all; then one openssl per signature (about 8 ms each),
    # appended to one file of 256-byte signatures; one awk encodes them
    LC_ALL=C awk -v n="$n" -v h="$(printf '%s' '{"alg":"RS256","typ":"JWT","kid":"'"$JWT_KID"'"}' | b64url)" \
        -v iss="$JWT_ISSUER" -v expiry="$JWT_EXP" "$B64_AWK"'
        BEGIN { for (i = 1; i <= n; i++)
            print h "." b64url_str("{\"sub\":\"bench-user\",\"iss\":\"" iss "\",\"exp\":" expiry ",\"jti\":\"" i "\"}") }' \
        >"$dir/signing-inputs.txt" || return 1
    : >"$dir/signatures.bin"
    while IFS= read -r input; do
        printf '%s' "$input" | openssl dgst -sha256 -sign "$JWT_RSA_KEY" -binary >>"$dir/signatures.bin" || return 1
    done <"$dir/signing-inputs.txt"
    # one line of hex per signature
    od -An -v -tx1 -w256 "$dir/signatures.bin" | LC_ALL=C awk -v inputs="$dir/signing-inputs.txt" "$B64_AWK"'
        { gsub(/ /, ""); if ((getline line < inputs) <= 0 || length($0) != 512) exit 1
          print line "." b64url_hex($0) }'
}
jwt_payload() { # [jti] -> claims (exp in 2100)
    printf '{"sub":"bench-user","iss":"%s","exp":%s%s}' "$JWT_ISSUER" "$JWT_EXP" "${1:+,\"jti\":\"$1\"}"
}
jwks_json() { # -> a JWKS with the public half of JWT_RSA_KEY
    local n e
    n=$(openssl rsa -in "$JWT_RSA_KEY" -noout -modulus 2>/dev/null | sed 's/^Modulus=//') || return 1
    e=$(openssl rsa -in "$JWT_RSA_KEY" -noout -text 2>/dev/null \
        | sed -n 's/^publicExponent: [0-9]* (0x\([0-9a-fA-F]*\)).*/\1/p')
    [[ -n "$n" && -n "$e" ]] || return 1
    printf '{"keys":[{"kty":"RSA","kid":"%s","alg":"RS256","use":"sig","n":"%s","e":"%s"}]}\n' \
        "$JWT_KID" "$(hex_b64url "$n")" "$(hex_b64url "$e")"
}

prepare_target() { # target dir -> the files the target's config and load need, in dir
    local t=$1 dir=$2 i
    mkdir -p "$dir"
    case "$t" in
        jwt-*) command -v openssl >/dev/null 2>&1 || die "$t needs openssl (apt-get install -y openssl)" ;;
    esac
    case "$t" in
        jwt-hs256 | chain) jwt_token HS256 "$(jwt_payload)" >"$dir/token" || die "$t: making the token failed" ;;
        jwt-rs256*)
            [[ -f "$JWT_RSA_KEY" ]] || die "$JWT_RSA_KEY not found"
            jwks_json >"$dir/jwks.json" || die "$t: making the JWKS failed"
            jwt_token RS256 "$(jwt_payload)" >"$dir/token" || die "$t: making the token failed"
            ;;
    esac
    if [[ "$t" == jwt-rs256-nocache ]]; then
        ((JWT_TOKENS >= 1)) || die "JWT_TOKENS must be at least 1"
        jwt_rs256_tokens "$JWT_TOKENS" "$dir" >"$dir/tokens.txt" || die "$t: making the tokens failed"
        sed "s|@TOKENS@|$dir/tokens.txt|" "$ROOT/bench/jwt-tokens.lua" >"$dir/tokens.lua"
    fi
    return 0
}

# auth_header target dir -> the request header every request needs (empty: none)
auth_header() {
    is_jwt "$1" && printf 'Authorization: Bearer %s\n' "$(<"$2/token")"
    return 0
}
# wrk_args target dir -> extra wrk arguments, one a line
wrk_args() {
    case "$1" in
        jwt-rs256-nocache) printf '%s\n' -s "$2/tokens.lua" ;;
        jwt-* | chain) printf '%s\n' -H "$(auth_header "$1" "$2")" ;;
    esac
}

# probe_target target dir url curl-timeout -> 0 when the plugins demonstrably ran; otherwise
# prints what it saw and returns 1
probe_target() {
    local t=$1 dir=$2 url=$3 timeout=$4 probe code tok sig c
    local auth=()
    # grep without -q below: it reads all of its input, so no SIGPIPE fails the pipeline (pipefail)
    is_jwt "$t" && auth=(-H "$(auth_header "$t" "$dir")")
    probe=$(probe_header "$t")
    if [[ -n "$probe" ]] \
        && ! curl -s -m "$timeout" -D - -o /dev/null "${auth[@]}" "$url" | tr -d '\r' | grep -ix "$probe" >/dev/null; then
        echo "no '$probe' in the response:" >&2
        curl -s -m "$timeout" -D - "${auth[@]}" "$url" >&2
        return 1
    fi
    # chain: the rate limit is checked (its policy header is on every response of the route)
    if [[ "$t" == chain ]] \
        && ! curl -s -m "$timeout" -D - -o /dev/null "${auth[@]}" "$url" | tr -d '\r' | grep -i '^ratelimit-policy: ' >/dev/null; then
        echo "no RateLimit-Policy header in the response:" >&2
        curl -s -m "$timeout" -D - "${auth[@]}" "$url" >&2
        return 1
    fi
    if is_jwt "$t"; then
        code=$(curl -s -m "$timeout" -o /dev/null -w '%{http_code}' "$url")
        [[ "$code" == 401 ]] || { echo "a request without a token got $code, not 401" >&2; return 1; }
        # the token with the first character of its signature changed
        tok=$(<"$dir/token"); sig=${tok##*.}; c=A; [[ "${sig:0:1}" == A ]] && c=B
        code=$(curl -s -m "$timeout" -o /dev/null -w '%{http_code}' \
            -H "Authorization: Bearer ${tok%.*}.$c${sig:1}" "$url")
        [[ "$code" == 401 ]] || { echo "a request with a bad signature got $code, not 401" >&2; return 1; }
        if ! curl -s -m "$timeout" -H "$(auth_header "$t" "$dir")" "$url" | grep -qx hello; then
            echo "a request with the token was not served by the upstream:" >&2
            curl -s -m "$timeout" -D - -H "$(auth_header "$t" "$dir")" "$url" >&2
            return 1
        fi
        if [[ -f "$dir/tokens.txt" ]]; then
            code=$(curl -s -m "$timeout" -o /dev/null -w '%{http_code}' \
                -H "Authorization: Bearer $(tail -1 "$dir/tokens.txt")" "$url")
            [[ "$code" == 200 ]] || { echo "the last token of tokens.txt got $code, not 200" >&2; return 1; }
        fi
    fi
    return 0
}
