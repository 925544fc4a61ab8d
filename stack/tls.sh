#!/usr/bin/env bash
# stack/tls.sh -- the local stack's certificates, sourced by stack/up.sh.
#
# A local CA, .stack/tls/ca.crt (its key ca.key beside it, readable by root only), and a
# server certificate for 127.0.0.1 and localhost signed by it, which PostgreSQL and
# pgBouncer present. Clients verify them with DB_SSLMODE=verify-full
# DB_SSLROOTCERT=.stack/tls/ca.crt. The CA is made once (10 years); the server
# certificate again when it is missing, expires within 30 days, or does not verify
# against the CA. The server's files live where the postgres user reads them
# (SERVER_DIR, owned by it: PostgreSQL refuses a key others may read).

TLS_DIR="$STACK_DIR/tls"
TLS_RENEW_SECONDS=$((30 * 86400))

tls_openssl() {  # LOG ARGS...: openssl, its output kept in LOG and shown on failure
    local out=$1
    shift
    openssl "$@" >"$out" 2>&1 || { show_log "$out"; die "openssl $1 failed"; }
}

# ensure_tls SERVER_DIR: the CA, and the server's key, certificate and CA copy in SERVER_DIR.
ensure_tls() {
    local server_dir=$1 new_ca=0 log="$LOG_DIR/openssl.log" work
    mkdir -p "$TLS_DIR"
    chmod 755 "$TLS_DIR"
    if [[ ! -s $TLS_DIR/ca.key ]] ||
        ! openssl x509 -checkend "$TLS_RENEW_SECONDS" -noout -in "$TLS_DIR/ca.crt" >/dev/null 2>&1; then
        log "creating the local certificate authority $TLS_DIR/ca.crt"
        (umask 077 && tls_openssl "$log" req -x509 -newkey rsa:2048 -nodes -days 3650 \
            -subj "/CN=devicestream local CA" -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.crt" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign")
        chmod 644 "$TLS_DIR/ca.crt"
        new_ca=1
    fi
    mkdir -p "$server_dir"
    if ((new_ca)) || [[ ! -s $server_dir/server.key ]] ||
        ! openssl verify -CAfile "$TLS_DIR/ca.crt" "$server_dir/server.crt" >/dev/null 2>&1 ||
        ! openssl x509 -checkend "$TLS_RENEW_SECONDS" -noout -in "$server_dir/server.crt" >/dev/null 2>&1; then
        log "creating the server certificate for $HOST and localhost, signed by the local CA"
        work=$(mktemp -d)
        (umask 077 && tls_openssl "$log" req -new -newkey rsa:2048 -nodes -subj "/CN=$HOST" \
            -keyout "$work/server.key" -out "$work/server.csr")
        printf 'subjectAltName = IP:%s, DNS:localhost\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n' \
            "$HOST" >"$work/extensions"
        tls_openssl "$log" x509 -req -in "$work/server.csr" -CA "$TLS_DIR/ca.crt" \
            -CAkey "$TLS_DIR/ca.key" -set_serial "0x$(openssl rand -hex 16)" -days 825 \
            -extfile "$work/extensions" -out "$work/server.crt"
        install -m 600 -o "$PG_OS_USER" -g "$PG_OS_USER" "$work/server.key" "$server_dir/server.key"
        install -m 644 -o "$PG_OS_USER" -g "$PG_OS_USER" "$work/server.crt" "$server_dir/server.crt"
        rm -rf "$work"
    fi
    install -m 644 -o "$PG_OS_USER" -g "$PG_OS_USER" "$TLS_DIR/ca.crt" "$server_dir/ca.crt"
    chown "$PG_OS_USER:$PG_OS_USER" "$server_dir"
    chmod 700 "$server_dir"
}

# The server certificate's SHA-256 fingerprint: written into the servers' configuration
# files, so that a new certificate changes them and the servers load it.
tls_fingerprint() {  # SERVER_DIR
    openssl x509 -noout -fingerprint -sha256 -in "$1/server.crt" | cut -d= -f2
}
