"""A run's user is the login that created it, never what the client claims (servers with basic-auth).

MLflow's clients fill a new run's ``user_id`` and its ``mlflow.user`` tag from the operating system
user (``getpass.getuser()``), and MLflow's server stores whatever arrives. In a trainer container
that is ``trainer`` for every team member ("Created by: trainer"), and anyone could create a run in
a teammate's name. With basic-auth every request carries the login, so the tracking store:

* creates a run with ``user_id`` and the ``mlflow.user`` tag set to the login, replacing what the
  request said (admins included: the login is who created the run);
* ignores later writes of ``mlflow.user`` (set-tag, log-batch, delete-tag): the rest of a
  log-batch is written. Ignored rather than refused because clients re-send their standard tags
  (cvops does when it resumes a run), and a refused log-batch would lose the metrics, params and
  tags beside the one that cannot change.

The login comes from MLflow's auth app, which sets ``flask.g.mlflow_authenticated_user`` on every
authenticated request. Calls outside a request (none in the server today) are left as MLflow does
them.
"""

from __future__ import annotations

import functools

from flask import g, has_request_context
from mlflow.entities import RunTag
from mlflow.utils.mlflow_tags import MLFLOW_USER


def _login() -> str | None:
    return getattr(g, "mlflow_authenticated_user", None) if has_request_context() else None


def _without_user_tag(tags):
    return [tag for tag in tags or () if tag.key != MLFLOW_USER]


def _created_by_login(create_run):
    @functools.wraps(create_run)
    def create(self, experiment_id, user_id, start_time, tags, run_name):
        if (login := _login()) is not None:
            user_id = login
            tags = [*_without_user_tag(tags), RunTag(MLFLOW_USER, login)]
        return create_run(self, experiment_id, user_id, start_time, tags, run_name)

    return create


def _user_tag_ignored(write_tag):
    """set_tag(run_id, tag) and delete_tag(run_id, key) skip the ``mlflow.user`` tag."""
    @functools.wraps(write_tag)
    def write(self, run_id, tag_or_key):
        key = getattr(tag_or_key, "key", tag_or_key)
        if key == MLFLOW_USER and _login() is not None:
            return None
        return write_tag(self, run_id, tag_or_key)

    return write


def _batch_without_user_tag(log_batch):
    @functools.wraps(log_batch)
    def log(self, run_id, metrics, params, tags):
        if _login() is not None:
            tags = _without_user_tag(tags)
        return log_batch(self, run_id, metrics, params, tags)

    return log


def install(store_class) -> None:
    """Patch the SQL tracking store class that every store the server builds derives from."""
    store_class.create_run = _created_by_login(store_class.create_run)
    store_class.set_tag = _user_tag_ignored(store_class.set_tag)
    store_class.delete_tag = _user_tag_ignored(store_class.delete_tag)
    store_class.log_batch = _batch_without_user_tag(store_class.log_batch)
