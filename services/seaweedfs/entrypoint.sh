#!/bin/sh
# SeaweedFS with S3 on port 9000 (where MinIO listens, so S3_ENDPOINT_URL=http://minio:9000 stays
# right) for exactly one identity: the stack's S3 keys, from S3_ACCESS_KEY(_FILE) and
# S3_SECRET_KEY(_FILE). Requests signed with any other key are refused. Arguments are extra
# `weed server` flags (docker-compose.seaweedfs.yml passes the volume size).
set -eu

secret() {  # secret NAME: $NAME, or the content of the file $NAME_FILE names
    eval "value=\${$1:-}"
    eval "file=\${$1_FILE:-}"
    if [ -z "$value" ] && [ -n "$file" ]; then
        [ -r "$file" ] || { echo "seaweedfs: $1_FILE=$file is not readable" >&2; exit 1; }
        value=$(cat "$file")
    fi
    [ -n "$value" ] || { echo "seaweedfs: set $1 or $1_FILE (the stack's S3 key)" >&2; exit 1; }
    printf '%s' "$value"
}

access_key=$(secret S3_ACCESS_KEY)
secret_key=$(secret S3_SECRET_KEY)
# Outside the data volume and readable by this user only: the keys never land on /data.
config_dir=$(mktemp -d)
S3_ACCESS_KEY=$access_key S3_SECRET_KEY=$secret_key python3 -c '
import json, os, sys
json.dump({"identities": [{"name": "cvops", "credentials": [
    {"accessKey": os.environ["S3_ACCESS_KEY"], "secretKey": os.environ["S3_SECRET_KEY"]}],
    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, sys.stdout)
' >"$config_dir/identities.json"
chmod 0600 "$config_dir/identities.json"
unset access_key secret_key S3_ACCESS_KEY S3_SECRET_KEY

# -ip is the address the parts use to reach each other inside this container; clients reach only
# the S3 port. A lone master elects itself after electionTimeout (10 s by default, on every start);
# a volume server otherwise waits preStopSeconds (10 s) before it stops.
exec weed -logtostderr server -dir=/data -ip=127.0.0.1 -ip.bind=0.0.0.0 \
    -s3 -s3.port=9000 -s3.config="$config_dir/identities.json" -s3.port.iceberg=0 -s3.port.lance=0 \
    -master.telemetry=false -master.electionTimeout=1s -volume.preStopSeconds=0 -volume.max=0 "$@"
