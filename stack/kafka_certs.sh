#!/usr/bin/env bash
# stack/kafka_certs.sh -- `make certs`: the certificates of the compose brokers' SASL_SSL
# listener (docker-compose.yml, README "Security"), in deploy/kafka/tls/:
#   ca.crt      the CA devices trust (give it to them; KAFKA_CA_FILE for our clients);
#   ca.key      its key: keep it off the broker hosts once the certificates are made;
#   broker.pem  the brokers' key and certificate, for Kafka's PEM keystore, readable by
#               the image's user (uid 1000) only.
# The certificate names localhost, kafka, kafka-2, kafka-3 and KAFKA_EXTERNAL_HOST (a DNS
# name or an IP address), the address devices connect to. Run again after changing it.
# shellcheck source=stack/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=stack/tls.sh
source "$(dirname "${BASH_SOURCE[0]}")/tls.sh"

command -v openssl >/dev/null || die "openssl is missing: apt-get install openssl"
DIR="$REPO_ROOT/deploy/kafka/tls"
EXTERNAL=${KAFKA_EXTERNAL_HOST:-localhost}
if [[ $EXTERNAL =~ ^[0-9.]+$|: ]]; then external="IP:$EXTERNAL"; else external="DNS:$EXTERNAL"; fi
SAN="DNS:localhost, DNS:kafka, DNS:kafka-2, DNS:kafka-3, $external"

new_ca=0
tls_ca "$DIR" "devicestream Kafka CA" && new_ca=1
force=$new_ca
[[ -f $DIR/san ]] && [[ $(<"$DIR/san") == "$SAN" ]] || force=1
tls_server "$DIR" "$DIR/broker" "kafka" "$SAN" "$force"
printf '%s\n' "$SAN" >"$DIR/san"
(umask 077 && cat "$DIR/broker/server.key" "$DIR/broker/server.crt" "$DIR/ca.crt" >"$DIR/broker.pem")
chown 1000:1000 "$DIR/broker.pem" 2>/dev/null || log "could not give broker.pem to uid 1000 (the Kafka image's user): do it as root"
log "Kafka certificates in $DIR: ca.crt for the devices, broker.pem for the brokers"
