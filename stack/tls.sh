#!/usr/bin/env bash
# stack/tls.sh -- certificates made with openssl: the local stack's (ensure_tls, sourced by
# stack/up.sh) and the compose stack's (stack/certs.sh, `make certs`). Needs
# stack/common.sh (log, die, show_log).
#
# The local stack: a CA, .stack/tls/ca.crt (its key ca.key beside it, readable by root
# only), and a server certificate for 127.0.0.1 and localhost signed by it, which
# PostgreSQL and pgBouncer present. Clients verify them with DB_SSLMODE=verify-full
# DB_SSLROOTCERT=.stack/tls/ca.crt. A CA is made once (10 years); a server certificate
# again when it is missing, expires within 30 days, or does not verify against its CA.

TLS_RENEW_SECONDS=$((30 * 86400))

tls_openssl() {  # ARGS...: openssl, its output shown on failure
    local out
    out=$(mktemp)
    openssl "$@" >"$out" 2>&1 || { show_log "$out"; rm -f "$out"; die "openssl $1 failed"; }
    rm -f "$out"
}

# tls_ca DIR CN: DIR/ca.key and DIR/ca.crt, made when missing or near expiry; returns 0
# when it made them.
tls_ca() {
    local dir=$1 cn=$2
    mkdir -p "$dir"
    if [[ -s $dir/ca.key ]] &&
        openssl x509 -checkend "$TLS_RENEW_SECONDS" -noout -in "$dir/ca.crt" >/dev/null 2>&1; then
        return 1
    fi
    log "creating the certificate authority $dir/ca.crt"
    (umask 077 && tls_openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=$cn" \
        -keyout "$dir/ca.key" -out "$dir/ca.crt" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign") ||
        exit 1
    chmod 644 "$dir/ca.crt"
}

# tls_server CA_DIR OUT_DIR CN SAN [FORCE]: OUT_DIR/server.key and OUT_DIR/server.crt for
# the subjectAltName SAN (e.g. "IP:127.0.0.1, DNS:localhost"), signed by CA_DIR's CA; made
# when missing, near expiry, not signed by that CA, or FORCE is 1. The key is 0600.
tls_server() {
    local ca=$1 out=$2 cn=$3 san=$4 force=${5:-0} work
    mkdir -p "$out"
    if ((force == 0)) && [[ -s $out/server.key ]] &&
        openssl verify -CAfile "$ca/ca.crt" "$out/server.crt" >/dev/null 2>&1 &&
        openssl x509 -checkend "$TLS_RENEW_SECONDS" -noout -in "$out/server.crt" >/dev/null 2>&1; then
        return 0
    fi
    log "creating the server certificate $out/server.crt for $san"
    work=$(mktemp -d)
    (umask 077 && tls_openssl req -new -newkey rsa:2048 -nodes -subj "/CN=$cn" \
        -keyout "$work/server.key" -out "$work/server.csr") || exit 1
    printf 'subjectAltName = %s\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n' \
        "$san" >"$work/extensions"
    tls_openssl x509 -req -in "$work/server.csr" -CA "$ca/ca.crt" -CAkey "$ca/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days 825 -extfile "$work/extensions" \
        -out "$work/server.crt"
    install -m 600 "$work/server.key" "$out/server.key"
    install -m 644 "$work/server.crt" "$out/server.crt"
    rm -rf "$work"
}

# ensure_tls SERVER_DIR: the local CA in .stack/tls, and the server's key, certificate and
# a copy of the CA in SERVER_DIR, owned by the postgres user (PostgreSQL refuses a key
# others may read; .stack may be out of its reach).
ensure_tls() {
    local server_dir=$1 new_ca=0
    tls_ca "$STACK_DIR/tls" "devicestream local CA" && new_ca=1
    chmod 755 "$STACK_DIR/tls"
    tls_server "$STACK_DIR/tls" "$server_dir" "$HOST" "IP:$HOST, DNS:localhost" "$new_ca"
    install -m 644 "$STACK_DIR/tls/ca.crt" "$server_dir/ca.crt"
    chown -R "$PG_OS_USER:$PG_OS_USER" "$server_dir"
    chmod 700 "$server_dir"
}

# The server certificate's SHA-256 fingerprint: written into the servers' configuration
# files, so that a new certificate changes them and the servers load it.
tls_fingerprint() {  # SERVER_DIR
    openssl x509 -noout -fingerprint -sha256 -in "$1/server.crt" | cut -d= -f2
}
