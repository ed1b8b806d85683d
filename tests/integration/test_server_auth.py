"""Basic-auth on the team endpoint: who may call what (MLflow's auth app, database in PostgreSQL)."""

import time
import uuid

import pytest
import requests

# Also against MLflow's own code paths (CVOPS_SERVER_PATCHES=off): the patches change only speed.
pytestmark = [pytest.mark.integration, pytest.mark.patches_on_and_off]

API = "/api/2.0/mlflow"


@pytest.fixture(scope="module")
def users(tracking_server):
    return tracking_server.create_users("owner", "other")


def call(server, method, path, auth=None, api=API, **kwargs):
    return requests.request(method, f"{server.url}{api}{path}", auth=auth, timeout=30, **kwargs)


def test_anonymous_request_is_refused(tracking_server):
    response = call(tracking_server, "GET", "/experiments/search", params={"max_results": 1})
    assert response.status_code == 401
    assert "Basic" in response.headers.get("WWW-Authenticate", "")


def test_wrong_password_is_refused(tracking_server):
    auth = (tracking_server.admin_username, tracking_server.admin_password + "x")
    response = call(tracking_server, "GET", "/experiments/search", auth=auth, params={"max_results": 1})
    assert response.status_code == 401


def test_unknown_user_is_refused(tracking_server):
    response = call(tracking_server, "GET", "/experiments/search", auth=("nobody-here", "whatever-password"),
                    params={"max_results": 1})
    assert response.status_code == 401


def test_non_owner_can_read_but_not_edit_another_users_experiment(tracking_server, users):
    owner, other = users["owner"], users["other"]
    created = call(tracking_server, "POST", "/experiments/create", auth=owner,
                   json={"name": f"owned-{uuid.uuid4().hex[:8]}"})
    assert created.status_code == 200, created.text
    experiment_id = created.json()["experiment_id"]
    run = call(tracking_server, "POST", "/runs/create", auth=owner, json={"experiment_id": experiment_id})
    assert run.status_code == 200, run.text
    run_id = run.json()["run"]["info"]["run_id"]

    # default_permission = READ: teammates see each other's work ...
    assert call(tracking_server, "GET", "/experiments/get", auth=other,
                params={"experiment_id": experiment_id}).status_code == 200
    # ... but cannot change it.
    rename = {"experiment_id": experiment_id, "new_name": f"hijacked-{uuid.uuid4().hex[:8]}"}
    assert call(tracking_server, "POST", "/experiments/update", auth=other, json=rename).status_code == 403
    metric = {"run_id": run_id, "key": "total_loss", "value": 9.9, "timestamp": 0, "step": 0}
    assert call(tracking_server, "POST", "/runs/log-metric", auth=other, json=metric).status_code == 403
    assert call(tracking_server, "POST", "/experiments/delete", auth=other,
                json={"experiment_id": experiment_id}).status_code == 403

    # The owner can.
    assert call(tracking_server, "POST", "/runs/log-metric", auth=owner, json=metric).status_code == 200
    assert call(tracking_server, "POST", "/experiments/update", auth=owner, json=rename).status_code == 200


def test_admin_grant_lets_a_teammate_edit(tracking_server, users):
    owner, other = users["owner"], users["other"]
    experiment_id = call(tracking_server, "POST", "/experiments/create", auth=owner,
                         json={"name": f"shared-{uuid.uuid4().hex[:8]}"}).json()["experiment_id"]
    rename = {"experiment_id": experiment_id, "new_name": f"renamed-{uuid.uuid4().hex[:8]}"}
    assert call(tracking_server, "POST", "/experiments/update", auth=other, json=rename).status_code == 403

    granted = requests.post(f"{tracking_server.url}/api/3.0/mlflow/users/permissions/grant",
                            auth=tracking_server.admin_auth, timeout=30,
                            json={"username": other[0], "resource_type": "experiment",
                                  "resource_id": experiment_id, "permission": "EDIT"})
    assert granted.status_code == 200, granted.text
    assert call(tracking_server, "POST", "/experiments/update", auth=other, json=rename).status_code == 200


def test_only_admins_create_users(tracking_server, users):
    response = call(tracking_server, "POST", "/users/create", auth=users["other"],
                    json={"username": f"sneaky-{uuid.uuid4().hex[:6]}", "password": "long-enough-password"})
    assert response.status_code == 403


def test_password_change_takes_effect_for_the_user(tracking_server):
    username, old, new = f"rotating-{uuid.uuid4().hex[:6]}", "first-password-123", "second-password-456"
    tracking_server.create_user(username, old)
    search = ("/experiments/search", {"max_results": 1})
    assert call(tracking_server, "GET", search[0], auth=(username, old), params=search[1]).status_code == 200
    changed = call(tracking_server, "PATCH", "/users/update-password", auth=tracking_server.admin_auth,
                   json={"username": username, "password": new})
    assert changed.status_code == 200, changed.text
    assert call(tracking_server, "GET", search[0], auth=(username, new), params=search[1]).status_code == 200


def _may_create_users(server, auth) -> bool:
    response = call(server, "POST", "/users/create", auth=auth,
                    json={"username": f"probe-{uuid.uuid4().hex[:8]}", "password": "long-enough-password"})
    assert response.status_code in (200, 403), response.text
    return response.status_code == 200


def _seconds_until(condition, limit_s: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        if condition():
            return time.monotonic() - started
        time.sleep(0.2)
    return None


def test_promoting_and_demoting_an_admin_takes_effect_within_the_cache_ttl(tracking_server_factory):
    """The admin flag is read from the per-worker credential cache (server_patches.py): a change
    lands at once in the worker that made it and within MLFLOW_AUTH_CACHE_TTL_SECONDS in the others."""
    ttl_s = 3
    server = tracking_server_factory(MLFLOW_AUTH_CACHE_TTL_SECONDS=str(ttl_s))
    try:
        lead = (f"lead-{uuid.uuid4().hex[:6]}", "lead-password-123456")
        server.create_user(*lead)
        assert not any(_may_create_users(server, lead) for _ in range(6))  # every worker caches "not admin"

        promoted = call(server, "PATCH", "/users/update-admin", auth=server.admin_auth,
                        json={"username": lead[0], "is_admin": True})
        assert promoted.status_code == 200, promoted.text
        assert _seconds_until(lambda: all(_may_create_users(server, lead) for _ in range(6)), ttl_s + 5) is not None

        demoted = call(server, "PATCH", "/users/update-admin", auth=server.admin_auth,
                       json={"username": lead[0], "is_admin": False})
        assert demoted.status_code == 200, demoted.text
        assert _seconds_until(lambda: not any(_may_create_users(server, lead) for _ in range(6)), ttl_s + 5) is not None
    finally:
        server.stop()


def test_a_logged_in_admin_s_calls_need_no_auth_database_round_trip(tracking_server_factory, postgres):
    """server_patches.py answers "is the caller an admin?" from the caller's row in the credential
    cache, saving an auth-database conversation per request. Shown by closing the auth database
    once the admin's login is cached: their calls still succeed, where MLflow alone asks the
    database and fails."""
    server = tracking_server_factory(GUNICORN_WORKERS="1")  # one worker: one cache to warm
    maintenance = postgres.connect()
    maintenance.autocommit = True

    def read_default_experiment() -> int:
        return call(server, "GET", "/experiments/get", auth=server.admin_auth,
                    params={"experiment_id": "0"}).status_code

    try:
        assert read_default_experiment() == 200
        with maintenance.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{server.auth_db}" ALLOW_CONNECTIONS false')
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                        (server.auth_db,))

        assert [read_default_experiment() for _ in range(5)] == [200] * 5
    finally:
        with maintenance.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{server.auth_db}" ALLOW_CONNECTIONS true')
        maintenance.close()
        server.stop()


def test_a_logged_in_user_s_calls_do_not_read_the_users_table(tracking_server_factory, postgres):
    """For a user who is not an admin, MLflow reads the caller's row again to look up its grants by
    user id; server_patches.py takes that row from the credential cache too. Shown by locking the
    users table once the user's login is cached: their calls still succeed, where MLflow alone
    waits on the lock. Grants are still read from the database on every call."""
    server = tracking_server_factory(GUNICORN_WORKERS="1")  # one worker: one cache to warm
    member = (f"member-{uuid.uuid4().hex[:6]}", f"member-pw-{uuid.uuid4().hex}")
    server.create_user(*member)
    _, run_id = server.create_run(f"members-own-{uuid.uuid4().hex[:6]}", as_user=member)
    locker = postgres.connect(server.auth_db)
    try:
        with locker.cursor() as cur:
            cur.execute("SET lock_timeout = '30s'")
            cur.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")  # held until the rollback below
        logged = requests.post(f"{server.url}{API}/runs/log-metric", auth=member, timeout=10,
                               json={"run_id": run_id, "key": "loss", "value": 0.5, "timestamp": 0, "step": 1})
        read = requests.get(f"{server.url}{API}/runs/get", auth=member, timeout=10, params={"run_id": run_id})
        assert (logged.status_code, read.status_code) == (200, 200), (logged.text, read.text)
        assert read.json()["run"]["data"]["metrics"] == [{"key": "loss", "value": 0.5, "timestamp": 0, "step": 1}]
    finally:
        locker.rollback()
        locker.close()
        server.stop()


def test_links_to_logged_models_are_withheld_from_a_user_denied_logged_models(tracking_server, users):
    """MLflow parses every runs/get and runs/search answer for a user who is not an admin, to
    withhold links to logged models that user may not see; server_patches.py skips that parse for
    answers that hold no such link. Both kinds of link are still withheld, runs without are served as is."""
    member, admin = users["other"], tracking_server.admin_auth
    experiment_id, plain_run = tracking_server.create_run(f"linked-{uuid.uuid4().hex[:6]}", as_user=member)
    model = call(tracking_server, "POST", "/logged-models", auth=admin,
                 json={"experiment_id": experiment_id, "name": "detector"})
    assert model.status_code == 200, model.text
    model_id = model.json()["model"]["info"]["model_id"]
    # Each kind of link on a run of its own (links are written by the admin: the member may not, later).
    links = {"outputs": ("/runs/outputs", {"models": [{"model_id": model_id, "step": 3}]}),
             "inputs": ("/runs/log-inputs", {"models": [{"model_id": model_id}]})}
    run_ids = {"plain": plain_run}
    for kind, (path, body) in links.items():
        run_ids[kind] = call(tracking_server, "POST", "/runs/create", auth=member,
                             json={"experiment_id": experiment_id}).json()["run"]["info"]["run_id"]
        response = call(tracking_server, "POST", path, auth=admin, json={"run_id": run_ids[kind], **body})
        assert response.status_code == 200, response.text
    for run_id in run_ids.values():
        assert call(tracking_server, "POST", "/runs/log-parameter", auth=member,
                    json={"run_id": run_id, "key": "model.backbone", "value": "R50"}).status_code == 200

    def seen_by(auth):
        """Each run as runs/get and as runs/search answer it."""
        page = call(tracking_server, "POST", "/runs/search", auth=auth, json={"experiment_ids": [experiment_id]})
        searched = {run["info"]["run_id"]: run for run in page.json()["runs"]}
        return {kind: (call(tracking_server, "GET", "/runs/get", auth=auth, params={"run_id": run_id}).json()["run"],
                       searched[run_id])
                for kind, run_id in run_ids.items()}

    as_admin = seen_by(admin)
    assert as_admin["outputs"][0]["outputs"]["model_outputs"] == [{"model_id": model_id, "step": 3}]
    assert as_admin["inputs"][0]["inputs"]["model_inputs"] == [{"model_id": model_id}]
    assert seen_by(member) == as_admin  # nothing is denied to them yet

    role = call(tracking_server, "POST", "/roles/create", api="/api/3.0/mlflow", auth=admin,
                json={"name": f"no-models-{uuid.uuid4().hex[:6]}", "workspace": "default"})
    assert role.status_code == 200, role.text
    role_id = role.json()["role"]["id"]
    for path, body in [("/roles/permissions/add", {"role_id": role_id, "resource_type": "logged_model",
                                                   "resource_pattern": "*", "permission": "DENY"}),
                       ("/roles/assign", {"role_id": role_id, "username": member[0]})]:
        response = call(tracking_server, "POST", path, api="/api/3.0/mlflow", auth=admin, json=body)
        assert response.status_code == 200, response.text

    as_member = seen_by(member)
    assert as_member["plain"] == as_admin["plain"]
    for answered in as_member["outputs"]:
        assert "model_outputs" not in answered.get("outputs", {})
    for answered in as_member["inputs"]:
        assert "model_inputs" not in answered.get("inputs", {})
