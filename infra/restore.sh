#!/usr/bin/env bash
# Restore a backup made by infra/backup.sh onto this stack (fresh volumes or existing ones):
# the backup's secrets go back into the secrets volume (a value set in .env still wins), the
# tracking, auth and sweeps databases are replaced by the backup's (one without the sweeps database,
# made before sweeps were backed up, leaves that one as it is), the backup's artifacts are uploaded
# to the bucket, then the stack is started and migrated to the current schema.
#
#   infra/restore.sh [--yes] BACKUP      (BACKUP: a backup directory or its .tar.gz)
source "$(dirname "$0")/lib.sh"

assume_yes=0
backup=
while [ $# -gt 0 ]; do
    case $1 in
        -y|--yes) assume_yes=1 ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        -*) die "unknown option '$1' (try --help)" ;;
        *) [ -z "$backup" ] || die "give one backup, not '$backup' and '$1'"; backup=$1 ;;
    esac
    shift
done
[ -n "$backup" ] || die "which backup? usage: infra/restore.sh [--yes] BACKUP"
[ -e "$backup" ] || die "$backup does not exist"

preflight

step "Check the backup"
unpacked=
cleanup() { [ -z "$unpacked" ] || rm -rf "$unpacked"; }
trap cleanup EXIT
if [ -f "$backup" ]; then
    unpacked=$(mktemp -d "${TMPDIR:-/tmp}/cvops-restore.XXXXXX")
    tar -C "$unpacked" -xzf "$backup" || die "$backup is not a readable .tar.gz backup"
    backup=$(find "$unpacked" -mindepth 1 -maxdepth 1 -type d | head -n 1)
fi
backup=$(cd "$backup" && pwd)
if [ ! -f "$backup/manifest.txt" ] || [ ! -d "$backup/artifacts" ]; then
    die "$backup is not a complete backup (no manifest.txt or artifacts/); was infra/backup.sh interrupted?"
fi
for db in $(required_databases); do
    [ -f "$backup/$db.dump" ] || die "$backup has no dump of database '$db' (POSTGRES_DB / POSTGRES_AUTH_DB differ from the backup's?)"
done
[ -f "$backup/SHA256SUMS" ] || die "$backup has no SHA256SUMS: it cannot be verified"
# Backups before 2026-11-30 list only the dumps; newer ones list every file, artifacts included.
(cd "$backup" && sha256sum --quiet --strict -c SHA256SUMS) \
    || die "checksum mismatch in $backup (files named above): the backup is damaged or was altered; nothing was restored"
sed 's/^/    /' "$backup/manifest.txt"

if [ "$assume_yes" != 1 ]; then
    [ -t 0 ] || die "restoring replaces the databases $(databases | tr '\n' ' ')of project $(compose_project); re-run with --yes to confirm"
    read -r -p "Replace the databases $(databases | tr '\n' ' ')of project $(compose_project) with this backup? [y/N] " answer
    [ "$answer" = y ] || [ "$answer" = Y ] || die "cancelled, nothing changed"
fi

step "Start the data services"
compose up -d postgres minio
wait_healthy 180 postgres minio

step "Stop the server so nothing writes during the restore"
compose stop mlflow

if [ -d "$backup/secrets" ]; then
    step "Restore the secrets"
    secrets_mirror import "$backup/secrets" || die "restoring the secrets failed (see above); nothing else was changed"
    if [ "$(setting POSTGRES_HOST postgres)" = postgres ]; then
        # The bundled server keeps the password its data directory was created with: give the
        # role the restored one (over the container's trusted local socket, read from the file).
        compose exec -T postgres sh -c 'psql -v ON_ERROR_STOP=1 --quiet -U "$POSTGRES_USER" -d postgres' <<'SQL' \
            || die "setting the restored database password failed (see above)"
\set password `cat "$POSTGRES_PASSWORD_FILE"`
ALTER ROLE CURRENT_USER PASSWORD :'password';
SQL
        info "database role password set to the restored one"
    fi
    # MinIO reads its root credentials at start only; the bucket is recreated if the store lost it.
    compose restart minio
    wait_healthy 180 minio
    compose run --rm --no-deps -T storage-init >/dev/null || die "storage-init failed after restoring the S3 keys"
else
    step "Keep the current secrets (a backup made before secrets were backed up)"
fi

step "Restore the databases"
for db in $(databases); do
    if [ ! -f "$backup/$db.dump" ]; then  # only the sweeps' database may be missing (checked above)
        info "$db: not in this backup (made before sweeps were backed up), left as it is"
        continue
    fi
    postgres_tool dropdb --if-exists --force "$db"
    postgres_tool createdb "$db"
    postgres_tool pg_restore --no-owner --role="$(setting POSTGRES_USER mlflow)" --exit-on-error \
        --dbname="$db" <"$backup/$db.dump" || die "pg_restore of database '$db' failed (see above)"
    info "$db restored"
done

step "Restore the artifacts"
bucket_mirror import "$backup/artifacts" || die "uploading the artifacts failed (see above); re-running restore is safe"

step "Start the stack (migrate brings an older backup to the current schema)"
compose up -d
wait_healthy 300 "${STACK_SERVICES[@]}"

step "Restore complete"
info "from $backup"
