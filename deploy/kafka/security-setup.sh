#!/bin/sh
# One-shot compose service `kafka-security`: the SCRAM-SHA-512 users and the ACLs of the
# brokers (docs/security.md). Runs in the Kafka image against the inter-broker listener
# (BROKER, PLAINTEXT on the compose network only, whose ANONYMOUS principal is the super
# user), and may run any number of times: users are overwritten, ACLs added once.
#
#   User:device  writes (and creates) device-data and device-data-*, nothing else;
#   User:worker  reads those, writes them (POST /ingest) and the dead-letter topic, uses
#                its consumer group and Faust's own topics (both named APP_ID);
#   anyone else  nothing (allow.everyone.if.no.acl.found=false).
set -eu

: "${KAFKA_DEVICE_PASSWORD:?set KAFKA_DEVICE_PASSWORD}" "${KAFKA_WORKER_PASSWORD:?set KAFKA_WORKER_PASSWORD}"
BOOTSTRAP=${KAFKA_ADMIN_BOOTSTRAP:-kafka:9091}
APP_ID=${APP_ID:-devicestream}
BIN=/opt/kafka/bin
export KAFKA_HEAP_OPTS="-Xmx256m"

for password in "$KAFKA_DEVICE_PASSWORD" "$KAFKA_WORKER_PASSWORD"; do
    # the SCRAM config syntax has no quoting: keep to characters it cannot misread
    case $password in
        *[!A-Za-z0-9_-]*) echo "Kafka passwords must be of A-Z a-z 0-9 _ - (e.g. openssl rand -hex 24)" >&2; exit 2 ;;
    esac
    [ "${#password}" -ge 16 ] || { echo "Kafka passwords must be at least 16 characters" >&2; exit 2; }
done

user() {  # NAME PASSWORD
    "$BIN/kafka-configs.sh" --bootstrap-server "$BOOTSTRAP" --alter --entity-type users \
        --entity-name "$1" --add-config "SCRAM-SHA-512=[iterations=8192,password=$2]"
}
allow() {  # PRINCIPAL OPERATION RESOURCE-ARGS...
    principal=$1 operation=$2
    shift 2
    "$BIN/kafka-acls.sh" --bootstrap-server "$BOOTSTRAP" --add --allow-principal "$principal" \
        --operation "$operation" "$@" >/dev/null
}

user device "$KAFKA_DEVICE_PASSWORD"
user worker "$KAFKA_WORKER_PASSWORD"

# device-data (shared mode) and device-data-{id} (per-device), but not device-data.dlq:
# a literal name and the prefix "device-data-", never the bare prefix "device-data".
for operation in Write Describe Create; do
    allow User:device "$operation" --topic device-data
    allow User:device "$operation" --topic device-data- --resource-pattern-type prefixed
done

for operation in Read Write Describe Create; do
    allow User:worker "$operation" --topic device-data
    allow User:worker "$operation" --topic device-data- --resource-pattern-type prefixed
    allow User:worker "$operation" --topic device-data.dlq
    allow User:worker "$operation" --topic "$APP_ID-" --resource-pattern-type prefixed
done
allow User:worker Read --group "$APP_ID" --resource-pattern-type prefixed
allow User:worker Describe --group "$APP_ID" --resource-pattern-type prefixed
allow User:worker Describe --cluster   # DescribeLogDirs: the topic sizes of /metrics

echo "Kafka users device and worker, and their ACLs, are in place"
