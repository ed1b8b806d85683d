#!/usr/bin/env bash
# Back up the cvops stack: pg_dump of the tracking, auth and sweeps databases, a mirror of the artifact
# bucket and the stack's secrets (secrets/, mode 0700, files 0600: the backup unlocks the stack,
# keep it as safe as the stack), into BACKUP_DIR/cvops-<UTC timestamp>/ (or a .tar.gz of it with
# --archive).
# Safe while the server runs: each database dump is a consistent snapshot; artifacts logged while
# the backup runs may or may not be included.
#
#   infra/backup.sh [--archive] [--dir DIR]
#
# Restore with: infra/restore.sh <the printed path>
source "$(dirname "$0")/lib.sh"

archive=0
backup_root=$(setting BACKUP_DIR ./backups)
while [ $# -gt 0 ]; do
    case $1 in
        --archive) archive=1 ;;
        --dir) backup_root=${2:?--dir needs a directory}; shift ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
    shift
done

preflight
require_running postgres minio
# The dumps hold every user's password hash and the artifacts the team's work: readable by the
# operator alone, whatever the shell's umask (022 would leave them readable by every local user).
umask 077
mkdir -p "$backup_root" || die "cannot create backup directory $backup_root"
name=cvops-$(date -u +%Y%m%dT%H%M%SZ)
target=$(cd "$backup_root" && pwd)/$name
work=$target.partial
[ ! -e "$target" ] || die "$target already exists"
rm -rf "$work"
mkdir -p "$work/artifacts"
mkdir "$work/secrets"

step "Dump the databases"
for db in $(databases); do
    if [ "$db" = "$(sweep_database)" ] && ! database_exists "$db"; then
        info "$db: none yet (the server's migrate creates it; a stack from before sweeps has none)"
        continue
    fi
    postgres_tool pg_dump --format=custom "$db" >"$work/$db.dump" \
        || die "pg_dump of database '$db' failed (see the message above)"
    info "$db: $(du -h "$work/$db.dump" | cut -f1)"
done

step "Mirror the artifact bucket"
bucket_mirror export "$work/artifacts" || die "copying the artifact bucket failed (see the message above)"

step "Copy the secrets"
secrets_mirror export "$work/secrets" || die "copying the secrets volume failed (see the message above)"
info "$(find "$work/secrets" -type f | wc -l) secrets"

step "Write the manifest"
{
    echo "created_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "project=$(compose_project)"
    echo "databases=$(databases | tr '\n' ' ')"
    echo "s3_bucket=$(setting S3_BUCKET mlflow-artifacts)"
    echo "mlflow_image=$(setting MLFLOW_IMAGE cvops/mlflow:3.17.2)"
    echo "postgres_image=$(setting POSTGRES_IMAGE postgres:16)"
    echo "artifact_files=$(find "$work/artifacts" -type f | wc -l)"
} >"$work/manifest.txt"
# Every file, artifacts included, so restore can tell a damaged or altered backup from a good one.
(cd "$work" && find . -type f ! -name SHA256SUMS -print0 | sort -z | xargs -0 -r sha256sum >SHA256SUMS)
mv "$work" "$target"
result=$target

if [ "$archive" = 1 ]; then
    step "Pack the archive"
    tar -C "$(dirname "$target")" -czf "$target.tar.gz.partial" "$name"
    mv "$target.tar.gz.partial" "$target.tar.gz"
    rm -rf "$target"
    result=$target.tar.gz
fi

step "Backup complete"
info "$result ($(du -sh "$result" | cut -f1))"
info "restore with: infra/restore.sh $result"
