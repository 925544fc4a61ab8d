#!/usr/bin/env bash
# stack/certs.sh -- `make certs`: the TLS certificates of the compose stack (docs/security.md),
# all signed by one CA, in deploy/tls/:
#   ca.crt               the CA: devices trust it for Kafka, the services for each other;
#   ca.key               its key: keep it off the servers once the certificates are made;
#   kafka/broker.pem     the brokers' key and certificate (Kafka's PEM keystore), for
#                        localhost, kafka, kafka-2, kafka-3 and KAFKA_EXTERNAL_HOST (a DNS
#                        name or an IP address: the address devices connect to);
#   postgres/server.*    PostgreSQL's and pgBouncer's, for timescaledb,
#                        timescaledb-replica and pgbouncer.
# Keys are readable by the images' users only: uid 1000 (apache/kafka) and uid 70 (the
# postgres user of the alpine timescaledb and pgbouncer images). Run again after changing
# KAFKA_EXTERNAL_HOST; remove deploy/tls first for a new CA.
# shellcheck source=stack/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=stack/tls.sh
source "$(dirname "${BASH_SOURCE[0]}")/tls.sh"

command -v openssl >/dev/null || die "openssl is missing: apt-get install openssl"
DIR=${CERTS_DIR:-$REPO_ROOT/deploy/tls}   # CERTS_DIR: elsewhere (the tests)
EXTERNAL=${KAFKA_EXTERNAL_HOST:-localhost}
if [[ $EXTERNAL =~ ^[0-9.]+$|: ]]; then external="IP:$EXTERNAL"; else external="DNS:$EXTERNAL"; fi
KAFKA_SAN="DNS:localhost, DNS:kafka, DNS:kafka-2, DNS:kafka-3, $external"
POSTGRES_SAN="DNS:timescaledb, DNS:timescaledb-replica, DNS:pgbouncer, DNS:localhost"

new_ca=0
tls_ca "$DIR" "devicestream CA" && new_ca=1
force=$new_ca
[[ -f $DIR/kafka/san && $(<"$DIR/kafka/san") == "$KAFKA_SAN" ]] || force=1
tls_server "$DIR" "$DIR/kafka" "kafka" "$KAFKA_SAN" "$force"
printf '%s\n' "$KAFKA_SAN" >"$DIR/kafka/san"
(umask 077 && cat "$DIR/kafka/server.key" "$DIR/kafka/server.crt" "$DIR/ca.crt" >"$DIR/kafka/broker.pem")
tls_server "$DIR" "$DIR/postgres" "timescaledb" "$POSTGRES_SAN" "$new_ca"
chown 1000:1000 "$DIR/kafka/broker.pem" && chown 70:70 "$DIR/postgres/server.key" ||
    die "could not give the keys to the images' users (uid 1000, uid 70): run as root"
log "certificates in $DIR: ca.crt (the CA), kafka/broker.pem, postgres/server.{crt,key}"
