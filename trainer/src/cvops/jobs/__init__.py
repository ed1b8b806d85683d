"""Training jobs: a validated job spec (:mod:`cvops.jobs.spec`) run as a container on this host's
Docker engine (:mod:`cvops.jobs.docker_backend`) or rendered as a Kubernetes Job
(:mod:`cvops.jobs.kubernetes`). Nothing here imports docker or NVML until a command needs it."""
