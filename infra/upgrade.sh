#!/usr/bin/env bash
# Upgrade the running cvops stack to the images configured now (after `git pull` or a changed
# *_IMAGE in .env): back up, fetch/build the new images, stop the server, migrate the schemas,
# start everything, wait until healthy. Re-running it when nothing changed is harmless.
#
#   infra/upgrade.sh [--no-backup] [--no-pull]
#     --no-backup  skip infra/backup.sh (only if you have a fresh backup)
#     --no-pull    do not pull registry images (offline sites; images already loaded)
source "$(dirname "$0")/lib.sh"

backup=1
pull=1
while [ $# -gt 0 ]; do
    case $1 in
        --no-backup) backup=0 ;;
        --no-pull) pull=0 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
    shift
done

preflight

if [ "$backup" = 1 ]; then
    step "Back up before touching anything"
    "$CVOPS_ROOT/infra/backup.sh"
else
    step "Skipping the backup (--no-backup)"
fi

if [ "$pull" = 1 ]; then
    step "Pull the registry images"
    # Services with a build section are built below; pull only the others.
    compose pull --ignore-pull-failures postgres minio \
        || info "pull failed; continuing with the images present locally"
else
    step "Skipping image pulls (--no-pull)"
fi

step "Build the server and storage-init images"
# Named: a bare `build` would also build the training images of the `train` profile.
compose build storage-init mlflow

step "Stop the server (clients retry/spool while it is down)"
compose stop mlflow

step "Migrate the tracking and auth schemas"
compose run --rm migrate || die "migration failed; the old server is stopped. Fix the cause and re-run, \
or roll back: restore the backup printed above with infra/restore.sh after reverting the images"

step "Start the upgraded stack"
compose up -d
wait_healthy 300 "${STACK_SERVICES[@]}"

step "Upgrade complete"
for service in "${STACK_SERVICES[@]}"; do
    info "$service: $(docker inspect --format '{{.Config.Image}}' "$(container_of "$service")")"
done
