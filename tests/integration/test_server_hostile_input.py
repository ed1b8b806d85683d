"""Hostile input on a team server: each attempt refused with the right status, nothing written or read.

The team is set up as issue 16 describes it: default permission READ, and two members denied on
each other's experiment (DENY grants). Each member has a run with a private file logged
through the artifact proxy. The server refuses on behalf of the patch ``hostile_input``
(services/mlflow/hostile_input.py); the traversal attempts that MLflow refuses on its own are also
run against the server with its patches off.
"""

import base64
import contextlib
import http.client
import json
import os
import socket
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest
import requests

from tests.harness.fixtures import free_port

pytestmark = [pytest.mark.integration, pytest.mark.hostile]

API = "/api/2.0/mlflow"
PROXY = "/api/2.0/mlflow-artifacts/artifacts"
SECRET = b"member2's private notes\n"


def call(server, method, path, auth, **kwargs):
    return requests.request(method, f"{server.url}{path}", auth=auth, timeout=30, **kwargs)


def ok(response):
    assert response.status_code == 200, f"{response.status_code} {response.text[:500]}"
    return response.json() if response.content else {}


class Member:
    def __init__(self, server, auth):
        self.auth = auth
        self.experiment_id, self.run_id = server.create_run(f"private-{uuid.uuid4().hex[:8]}", as_user=auth)
        self.artifact_root = f"{self.experiment_id}/{self.run_id}/artifacts"


@pytest.fixture(scope="module")
def team(tracking_server):
    """member1 and member2, each denied on the other's experiment; member2 logged notes.txt."""
    accounts = tracking_server.create_users("member1", "member2")
    member1, member2 = Member(tracking_server, accounts["member1"]), Member(tracking_server, accounts["member2"])
    ok(call(tracking_server, "PUT", f"{PROXY}/{member2.artifact_root}/notes.txt", member2.auth, data=SECRET))
    for member, other in ((member1, member2), (member2, member1)):
        ok(call(tracking_server, "POST", "/api/3.0/mlflow/users/permissions/grant", tracking_server.admin_auth,
                json={"username": member.auth[0], "resource_type": "experiment",
                      "resource_id": other.experiment_id, "permission": "DENY"}))
    # The denial holds on MLflow's own routes: the registry is the way round it tested below.
    assert call(tracking_server, "GET", f"{PROXY}/{member2.artifact_root}/notes.txt", member1.auth).status_code == 403
    return member1, member2


def store_key(server, relative: str) -> str:
    """The S3 key of a path relative to the server's artifact destination."""
    return f"{server.artifacts_destination.removeprefix('s3://').split('/', 1)[1]}/{relative}"


def new_registered_model(server, auth) -> str:
    name = f"hostile-{uuid.uuid4().hex[:8]}"
    ok(call(server, "POST", f"{API}/registered-models/create", auth, json={"name": name}))
    return name


def version_artifact(server, auth, name, path="notes.txt"):
    return call(server, "GET", "/model-versions/get-artifact", auth,
                params={"name": name, "version": "1", "path": path})


def assert_refused(response, *statuses, error_code=None):
    assert response.status_code in statuses, f"{response.status_code} {response.text[:500]}"
    if error_code:
        assert response.json()["error_code"] == error_code


# --------------------------------------------------------------------------- the registry


@pytest.mark.parametrize("source_form", ["s3", "s3-with-own-run-id", "s3-upper-case-bucket", "proxy-url-with-own-run-id"])
def test_a_denied_user_cannot_register_another_users_run_artifacts(tracking_server, team, s3, source_form):
    """Found by attack on the compose stack (issue 16): the source named member2's run folder in the
    server's bucket, the version was created (200) and model-versions/get-artifact then served the
    file with the server's S3 credentials. Stock MLflow 3.17.2 has the same hole. A source inside the
    server's artifact store must be the artifacts of a run or logged model the caller may read.
    Sources and model-versions/get-artifact were the road of CVE-2023-1177 and CVE-2023-2356 (local
    and relative paths); this one needs neither."""
    member1, member2 = team
    name = new_registered_model(tracking_server, member1.auth)
    request = {"name": name}
    if source_form.startswith("s3"):
        bucket = s3.bucket.upper() if source_form == "s3-upper-case-bucket" else s3.bucket
        request["source"] = f"s3://{bucket}/{store_key(tracking_server, member2.artifact_root)}"
    else:
        request["source"] = f"{tracking_server.url}{PROXY}/{member2.artifact_root}"
    if source_form.endswith("own-run-id"):
        request["run_id"] = member1.run_id  # a run member1 may read, but not the one the source names

    created = call(tracking_server, "POST", f"{API}/model-versions/create", member1.auth, json=request)

    assert_refused(created, 400, 403)
    assert_refused(version_artifact(tracking_server, member1.auth, name), 400, 403, 404)
    assert SECRET not in version_artifact(tracking_server, member1.auth, name).content


def test_a_member_registers_their_own_run_by_its_s3_source(tracking_server, team, s3):
    """The check refuses only what the caller may not read: member2's own run, by the same kind of
    source, is registered and served."""
    _, member2 = team
    name = new_registered_model(tracking_server, member2.auth)
    ok(call(tracking_server, "POST", f"{API}/model-versions/create", member2.auth,
            json={"name": name, "source": f"s3://{s3.bucket}/{store_key(tracking_server, member2.artifact_root)}"}))
    served = version_artifact(tracking_server, member2.auth, name)
    assert served.status_code == 200 and served.content == SECRET


def test_reads_through_a_version_are_checked_against_its_source(tracking_server, team, s3):
    """A version made before the check (here: by the admin, who may read everything) still serves
    its files only to callers who may read the run they belong to: member1 reads the registered
    model (default READ) but not member2's run."""
    member1, member2 = team
    name = new_registered_model(tracking_server, tracking_server.admin_auth)
    ok(call(tracking_server, "POST", f"{API}/model-versions/create", tracking_server.admin_auth,
            json={"name": name, "source": f"s3://{s3.bucket}/{store_key(tracking_server, member2.artifact_root)}"}))
    assert version_artifact(tracking_server, tracking_server.admin_auth, name).content == SECRET
    assert version_artifact(tracking_server, member2.auth, name).content == SECRET

    refused = version_artifact(tracking_server, member1.auth, name)
    assert_refused(refused, 403, error_code="PERMISSION_DENIED")
    assert SECRET not in refused.content


@pytest.mark.parametrize("where", ["bucket-outside-destination", "experiment-root", "not-a-run"])
def test_sources_in_the_store_that_are_no_run_or_model_are_refused_even_to_the_admin(
        tracking_server, team, s3, where):
    """The server's credentials reach the whole bucket (other servers' prefixes, experiment roots):
    only a run's or logged model's artifacts may back a version."""
    _, member2 = team
    relative = {"bucket-outside-destination": None,
                "experiment-root": member2.experiment_id,
                "not-a-run": f"{member2.experiment_id}/{uuid.uuid4().hex}/artifacts"}[where]
    key = f"another-server/{member2.artifact_root}" if relative is None else store_key(tracking_server, relative)
    name = new_registered_model(tracking_server, tracking_server.admin_auth)
    created = call(tracking_server, "POST", f"{API}/model-versions/create", tracking_server.admin_auth,
                   json={"name": name, "source": f"s3://{s3.bucket}/{key}"})
    assert_refused(created, 400, 403)


# --------------------------------------------------------------------------- experiment artifact locations


@pytest.mark.parametrize("location", [
    "mlflow-artifacts:/{other}/{run}/artifacts", "s3://{bucket}/{destination}/{other}", "file:///etc",
    "/etc", "mlflow-artifacts:/mine?x=1", "mlflow-artifacts:/mine#/../../{other}", "mlflow-artifacts:/mine;/../../{other}",
    "s3://{bucket}/elsewhere",
], ids=["other-users-run", "other-users-experiment-in-bucket", "file-uri", "absolute-path", "query", "fragment",
        "params", "bucket-elsewhere"])
def test_experiments_get_no_user_supplied_artifact_location(tracking_server, team, s3, location):
    """Found by attack (issue 16): experiments/create took any artifact_location, so runs of a new
    experiment could write into, and read from, another user's folder or the server's file system.
    On a team server the server assigns every location (mlflow-artifacts:/<experiment id>). The
    fragment form is that of CVE-2024-1483 and CVE-2024-3848, which MLflow 3.17.2 refuses itself;
    the ';' form (the separator of CVE-2024-1593) it accepted, as every other form here."""
    member1, member2 = team
    location = location.format(other=member2.experiment_id, run=member2.run_id, bucket=s3.bucket,
                               destination=store_key(tracking_server, "").rstrip("/"))
    name = f"located-{uuid.uuid4().hex[:8]}"
    created = call(tracking_server, "POST", f"{API}/experiments/create", member1.auth,
                   json={"name": name, "artifact_location": location})
    assert_refused(created, 400, error_code="INVALID_PARAMETER_VALUE")
    assert "artifact_location" in created.json()["message"]
    found = call(tracking_server, "GET", f"{API}/experiments/get-by-name", tracking_server.admin_auth,
                 params={"experiment_name": name})
    assert found.status_code == 404


def test_experiments_without_a_location_get_the_server_s(tracking_server, team):
    member1, _ = team
    experiment_id = ok(call(tracking_server, "POST", f"{API}/experiments/create", member1.auth,
                            json={"name": f"plain-{uuid.uuid4().hex[:8]}"}))["experiment_id"]
    experiment = ok(call(tracking_server, "GET", f"{API}/experiments/get", member1.auth,
                         params={"experiment_id": experiment_id}))["experiment"]
    assert experiment["artifact_location"] == f"mlflow-artifacts:/{experiment_id}"


def test_the_ui_s_ajax_routes_refuse_alike(tracking_server, team, s3):
    """The UI calls the same handlers under /ajax-api: the refusals hold there too."""
    member1, member2 = team
    ajax = "/ajax-api/2.0/mlflow"
    located = call(tracking_server, "POST", f"{ajax}/experiments/create", member1.auth,
                   json={"name": f"located-{uuid.uuid4().hex[:8]}", "artifact_location": "file:///etc"})
    assert_refused(located, 400, error_code="INVALID_PARAMETER_VALUE")
    name = new_registered_model(tracking_server, member1.auth)
    registered = call(tracking_server, "POST", f"{ajax}/model-versions/create", member1.auth, json={
        "name": name, "source": f"s3://{s3.bucket}/{store_key(tracking_server, member2.artifact_root)}"})
    assert_refused(registered, 403, error_code="PERMISSION_DENIED")
    status, body = proxy_attempt(tracking_server, tracking_server.admin_auth, "upload",
                                 fill(NON_CANONICAL["backslash-traversal"], member1, member2),
                                 proxy=PROXY.replace("/api/", "/ajax-api/"))
    assert status == 400, body


# --------------------------------------------------------------------------- paths through the artifact proxy


def stored_keys(server, s3) -> set[str]:
    prefix = store_key(server, "")
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def proxy_attempt(server, auth, operation, raw_path, proxy=PROXY):
    """The proxy route of ``operation`` with ``raw_path`` sent byte for byte: requests (urllib3)
    would resolve ``..`` segments itself, so the attempt goes out through http.client."""
    if operation == "list":
        method, target = "GET", f"{proxy}?path={raw_path}"
    else:
        method = {"upload": "PUT", "download": "GET", "delete": "DELETE"}[operation]
        target = f"{proxy}/{raw_path}"
    body = b"planted" if operation == "upload" else None
    credentials = base64.b64encode(":".join(auth).encode()).decode()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(method, target, body=body, headers={"Authorization": f"Basic {credentials}"})
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


# Each: (raw path, with {own} = member1's run root, {other} = member2's). Not canonical, so refused
# before anything resolves it: authorising one spelling while the store keeps (or a real S3
# server normalises to) another is how a path escapes the experiment it was checked against.
NON_CANONICAL = {
    # Found by attack: wrote an oddly named object. CVE-2023-2780 was this form in model version sources.
    "backslash-traversal": "{own}\\..\\..\\x",
    "backslash-encoded": "{own}%5C..%5C..%5Cx",
    "dot-segment": "./{other}/notes.txt",
    "dot-segment-encoded": "%2E/{other}/notes.txt",
    "leading-zero-experiment": "0{other}/notes.txt",
    "empty-segment": "{own}/a%2F%2Fb",
    "absolute": "%2Fetc%2Fpasswd",
    "nul": "{own}/notes.txt%00.png",
    "overlong": "{own}/" + "n" * 1100,
    # member2's file named with backslashes only: MLflow's auth finds no experiment id before a
    # '/', so judges it against the default READ, and SeaweedFS stores '\\' as '/' (below).
    "backslash-separators": "{other_backslashed}\\notes.txt",
    "backslash-separators-encoded": "{other_backslashed_encoded}%5Cnotes.txt",
}
# Traversal into member2's run, refused by MLflow too: patches on and off. The forms of MLflow's
# past path-traversal CVEs, tried through the proxy: `..` segments, encoded once and twice
# (CVE-2024-1560: a double-decoding bypass in the artifact delete handler of the fix for
# CVE-2023-6831), and an encoded slash.
TRAVERSAL = {
    "direct": "{other}/notes.txt",
    "dot-dot": "{own}/../../../{other}/notes.txt",
    "dot-dot-encoded": "{own}/%2e%2e/%2e%2e/%2e%2e/{other}/notes.txt",
    "dot-dot-double-encoded": "{own}/%252e%252e/%252e%252e/%252e%252e/{other}/notes.txt",
    "slash-encoded": "{own}%2F..%2F..%2F..%2F{other}/notes.txt",
}


def fill(path, member1, member2):
    return path.format(own=member1.artifact_root, other=member2.artifact_root,
                       other_backslashed=member2.artifact_root.replace("/", "\\"),
                       other_backslashed_encoded=member2.artifact_root.replace("/", "%5C"))


@pytest.mark.parametrize("caller", ["member1", "admin"])
@pytest.mark.parametrize("operation", ["upload", "download", "list", "delete"])
@pytest.mark.parametrize("attempt", list(NON_CANONICAL))
def test_non_canonical_artifact_paths_are_refused(tracking_server, team, s3, operation, attempt, caller):
    """400 INVALID_PARAMETER_VALUE, or MLflow's own 403 where its permission check refuses a
    member first (writes judged against the default READ). The admin passes every permission
    check, so their attempts show the refusal itself."""
    member1, member2 = team
    auth = member1.auth if caller == "member1" else tracking_server.admin_auth
    before = stored_keys(tracking_server, s3)
    status, body = proxy_attempt(tracking_server, auth, operation, fill(NON_CANONICAL[attempt], member1, member2))
    if not (caller == "member1" and status == 403):
        assert status == 400, f"{status} {body[:500]}"
        assert json.loads(body)["error_code"] == "INVALID_PARAMETER_VALUE"
    assert SECRET not in body
    assert stored_keys(tracking_server, s3) == before


@pytest.mark.patches_on_and_off
@pytest.mark.parametrize("operation", ["upload", "download", "list", "delete"])
@pytest.mark.parametrize("attempt", list(TRAVERSAL))
def test_traversal_into_another_users_run_is_refused(tracking_server, team, s3, operation, attempt):
    member1, member2 = team
    before = stored_keys(tracking_server, s3)
    status, body = proxy_attempt(tracking_server, member1.auth, operation, fill(TRAVERSAL[attempt], member1, member2))
    assert status in (400, 403, 404), f"{status} {body[:500]}"
    assert SECRET not in body
    assert stored_keys(tracking_server, s3) == before
    assert call(tracking_server, "GET", f"{PROXY}/{member2.artifact_root}/notes.txt", member2.auth).content == SECRET


def test_a_canonical_path_still_works(tracking_server, team, s3):
    member1, _ = team
    path = f"{member1.artifact_root}/nested/ok.txt"
    ok(call(tracking_server, "PUT", f"{PROXY}/{path}", member1.auth, data=b"fine"))
    assert call(tracking_server, "GET", f"{PROXY}/{path}", member1.auth).content == b"fine"
    assert store_key(tracking_server, path) in stored_keys(tracking_server, s3)
    listed = ok(call(tracking_server, "GET", f"{PROXY}?path={urllib.parse.quote(member1.artifact_root + '/nested')}",
                     member1.auth))
    assert [entry["path"] for entry in listed["files"]] == ["ok.txt"]


def test_seaweedfs_stores_other_spellings_of_a_key_as_the_same_object(s3):
    """Why artifact paths must be canonical before they are authorised, on a real S3 server: the
    harness's SeaweedFS (the compose stack's store) stores ``a\\b`` and ``a//b`` as the object
    ``a/b``, drops a leading '/', refuses '.' and '..' segments (400 InvalidRequest, in either
    separator) and keeps a leading zero as written. So a backslash-spelled path names another
    folder to the store than to MLflow's permission check (``backslash-separators`` above)."""
    from botocore.exceptions import ClientError

    client, prefix = s3.client(), f"spellings-{uuid.uuid4().hex[:8]}"

    def put_then_read(written: str, read: str) -> bytes:
        client.put_object(Bucket=s3.bucket, Key=f"{prefix}/{written}", Body=written.encode())
        return client.get_object(Bucket=s3.bucket, Key=f"{prefix}/{read}")["Body"].read()

    assert put_then_read("a\\b", "a/b") == b"a\\b"
    assert put_then_read("c//d", "c/d") == b"c//d"
    assert client.get_object(Bucket=s3.bucket, Key=f"/{prefix}/c/d")["Body"].read() == b"c//d"
    for dotted in ("./e", "f/../g", "h\\..\\i"):
        with pytest.raises(ClientError, match="InvalidRequest"):
            client.put_object(Bucket=s3.bucket, Key=f"{prefix}/{dotted}", Body=b"x")
    put_then_read("02/j", "02/j")
    with pytest.raises(ClientError, match="NoSuchKey"):
        client.get_object(Bucket=s3.bucket, Key=f"{prefix}/2/j")


# --------------------------------------------------------------------------- what S3 errors reveal


@pytest.fixture(scope="module", params=["unreachable-endpoint", "refused-keys"])
def broken_store_server(request, tracking_server_factory, s3):
    """A server whose artifact store fails: nothing listens at its S3 endpoint, or the store
    refuses its keys (SeaweedFS, like MinIO, checks signatures; it creates a missing bucket on
    the first upload, so a missing bucket is no failure there)."""
    if request.param == "unreachable-endpoint":
        server = tracking_server_factory(MLFLOW_S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")
        hidden = (server.artifacts_destination, s3.bucket, "127.0.0.1")
        expected = {"TEMPORARILY_UNAVAILABLE": 503}
    else:
        wrong_secret = f"not-the-store-s-secret-{uuid.uuid4().hex[:8]}"
        server = tracking_server_factory(AWS_SECRET_ACCESS_KEY=wrong_secret)
        hidden = (server.artifacts_destination, s3.bucket, wrong_secret, s3.access_key)
        expected = {"INTERNAL_ERROR": 500}
    yield server, hidden, expected
    server.stop()


@pytest.mark.parametrize("operation", ["upload", "download", "list", "delete", "get-artifact"])
def test_artifact_store_errors_name_no_bucket_key_or_endpoint(broken_store_server, operation):
    """Found on the compose stack (issue 16): 500 answers named the bucket and object keys. A
    failing store is still a failure (5xx, MLflow's JSON error shape), but the answer says only
    what failed (the path as the request gave it); the server log keeps the details for the operator."""
    server, hidden, expected = broken_store_server
    experiment_id, run_id = server.create_run(f"broken-store-{uuid.uuid4().hex[:8]}")
    path = f"{experiment_id}/{run_id}/artifacts/model.pth"
    if operation == "get-artifact":
        response = call(server, "GET", "/get-artifact", server.admin_auth, params={"run_id": run_id, "path": "model.pth"})
    else:
        status, body = proxy_attempt(server, server.admin_auth, operation, path)
        response = requests.models.Response()
        response.status_code, response._content = status, body
    answered = (response.json().get("error_code"), response.status_code)
    assert answered in expected.items(), f"{response.status_code} {response.text[:500]}"
    if response.status_code >= 500:  # the operator's copy, with the details the client is not given
        assert "artifact store: " in server.log()
    for secret in hidden:
        assert secret not in response.text


# --------------------------------------------------------------------------- who may call what


# Every kind of route the server exposes, with a request that would succeed for the admin.
ROUTES = {
    "rest": ("GET", "/api/2.0/mlflow/experiments/search?max_results=1", None),
    "ajax": ("GET", "/ajax-api/2.0/mlflow/experiments/search?max_results=1", None),
    "graphql": ("POST", "/graphql", {"query": "query { __typename }"}),
    "run-artifact": ("GET", "/get-artifact?run_id=0&path=x", None),
    "model-version-artifact": ("GET", "/model-versions/get-artifact?name=x&version=1&path=x", None),
    "proxy-list": ("GET", f"{PROXY}?path=", None),
    "proxy-upload": ("PUT", f"{PROXY}/0/planted.txt", None),
    "metrics": ("GET", "/metrics", None),
    "ui": ("GET", "/", None),
    "signup-page": ("GET", "/signup", None),
    "users-create": ("POST", "/api/2.0/mlflow/users/create", {"username": "intruder", "password": "long-enough-password"}),
}


@pytest.mark.parametrize("route", list(ROUTES))
def test_anonymous_callers_are_refused_on_every_route(tracking_server, s3, route):
    """No route but /health, /ready, /server-info and the UI's static files answers without a login."""
    method, path, body = ROUTES[route]
    before = stored_keys(tracking_server, s3)
    response = requests.request(method, f"{tracking_server.url}{path}", json=body, timeout=30)
    assert response.status_code == 401, f"{response.status_code} {response.text[:300]}"
    assert stored_keys(tracking_server, s3) == before


def raw_get(server, raw_path: str) -> tuple[int, bytes]:
    """An anonymous GET with the path sent byte for byte (requests would resolve ``..`` itself).
    A redirect is followed if it stays under /static-files/ (Werkzeug merges doubled slashes that
    way); one leading anywhere else is answered as it came."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("GET", raw_path)
        answer = connection.getresponse()
        status, body, location = answer.status, answer.read(), answer.getheader("Location") or ""
    finally:
        connection.close()
    target = urllib.parse.urlsplit(location)
    if status in (301, 302, 307, 308) and target.path.startswith("/static-files/") and ".." not in target.path:
        return raw_get(server, target.path + (f"?{target.query}" if target.query else ""))
    return status, body


def a_ui_bundle_file() -> str:
    """The path of one of the UI's JavaScript files, as the UI's page names it."""
    import mlflow.server

    build = Path(mlflow.server.__file__).parent / "js" / "build"
    return "/static-files/" + next(build.glob("static/js/*.js")).relative_to(build).as_posix()


# MLflow leaves every path beginning /static (and /health, /favicon.ico) open to anonymous
# callers, for the UI's own files; each of these tries to reach past them.
STATIC_ESCAPES = {
    "into-the-api": "/static-files/../ajax-api/2.0/mlflow/experiments/search?max_results=1",
    "into-the-api-encoded": "/static-files/%2e%2e/ajax-api/2.0/mlflow/experiments/search?max_results=1",
    "flask-static-into-the-api": "/static/../api/2.0/mlflow/experiments/search?max_results=1",
    "onto-the-disk": "/static-files/../../../../../../etc/passwd",
    "onto-the-disk-encoded": "/static-files/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "onto-the-disk-absolute": "/static-files//etc/passwd",
    "the-server-s-own-code": "/static-files/../../__init__.py",
    "a-prefix-alike": "/staticx/../ajax-api/2.0/mlflow/experiments/search?max_results=1",
}


def test_the_ui_s_own_files_are_public_and_nothing_else_is_reached_through_them(tracking_server):
    """The UI's bundle is public by MLflow's design (its code, no data; the page that loads it asks
    for a login). Every way through the open /static prefix to the API, the server's files or the
    disk gets no data: 401 or 404."""
    status, body = raw_get(tracking_server, a_ui_bundle_file())
    assert status == 200 and len(body) > 0
    for name, raw_path in STATIC_ESCAPES.items():
        status, body = raw_get(tracking_server, raw_path)
        assert status in (401, 404), (name, status, body[:300])
        assert b"experiments" not in body and b"root:" not in body and b"import" not in body, (name, body[:300])


# The account routes beyond sign-up, as member1 would try them on member2 (and on itself, for the
# admin flag), on both API prefixes.
ACCOUNT_ROUTES = {
    "read-another-user": ("GET", "users/get", {"username": "{other}"}),
    "change-another-user-s-password": ("PATCH", "users/update-password",
                                       {"username": "{other}", "password": "taken-over-password"}),
    "make-oneself-admin": ("PATCH", "users/update-admin", {"username": "{self}", "is_admin": True}),
    "delete-another-user": ("DELETE", "users/delete", {"username": "{other}"}),
}


@pytest.mark.parametrize("prefix", ["/api/2.0/mlflow", "/ajax-api/2.0/mlflow"])
@pytest.mark.parametrize("attempt", list(ACCOUNT_ROUTES))
def test_members_cannot_read_change_or_delete_accounts(tracking_server, team, attempt, prefix):
    """MLflow's admin-only and self-only account routes, held in place: 403 for a member, 401
    anonymous, and afterwards member2 still logs in with its password and nobody became admin."""
    member1, member2 = team
    method, route, fields = ACCOUNT_ROUTES[attempt]
    body = {key: value.format(other=member2.auth[0], self=member1.auth[0]) if isinstance(value, str) else value
            for key, value in fields.items()}
    as_query = {"params": body} if method == "GET" else {"json": body}
    assert call(tracking_server, method, f"{prefix}/{route}", member1.auth, **as_query).status_code == 403
    assert requests.request(method, f"{tracking_server.url}{prefix}/{route}", timeout=30,
                            **as_query).status_code == 401
    assert call(tracking_server, "GET", f"{API}/experiments/get", member2.auth,
                params={"experiment_id": member2.experiment_id}).status_code == 200
    for member in (member1, member2):
        account = call(tracking_server, "GET", "/api/2.0/mlflow/users/get", tracking_server.admin_auth,
                       params={"username": member.auth[0]})
        assert account.json()["user"]["is_admin"] is False


@pytest.mark.parametrize("route", ["signup-page", "users-create"])
def test_user_management_refuses_members(tracking_server, team, route):
    method, path, body = ROUTES[route]
    response = call(tracking_server, method, path, team[0].auth, json=body)
    assert response.status_code == 403, f"{response.status_code} {response.text[:300]}"


# --------------------------------------------------------------------------- cross-site requests

# What a browser sends when a page of another origin submits a form or calls fetch() with the
# visitor's cached basic-auth login: the page's origin ("null" from a sandboxed frame or a
# no-referrer page), and, for a form, a form-encoded body.
FOREIGN_ORIGINS = {"another-site": "https://evil.example", "opaque": "null",
                   "another-localhost-port": "http://localhost:{other_port}"}
# The state-changing routes of user management and a tracking write, each as a form would post it.
FORM_POSTS = {
    "signup-form": ("/api/2.0/mlflow/users/create-ui", {"username": "{user}", "password": "long-enough-password"}),
    "users-create": ("/api/2.0/mlflow/users/create", {"username": "{user}", "password": "long-enough-password"}),
    "grant-permission": ("/api/3.0/mlflow/users/permissions/grant",
                         {"username": "{user}", "resource_type": "experiment", "resource_id": "0", "permission": "MANAGE"}),
    "experiments-create": ("/api/2.0/mlflow/experiments/create", {"name": "{user}"}),
}


def foreign_origin(server, which):
    return FOREIGN_ORIGINS[which].format(other_port=server.port + 1)


def nothing_named(server, name) -> bool:
    user = call(server, "GET", "/api/2.0/mlflow/users/get", server.admin_auth, params={"username": name})
    experiment = call(server, "GET", f"{API}/experiments/get-by-name", server.admin_auth,
                      params={"experiment_name": name})
    return user.status_code == 404 and experiment.status_code == 404


@pytest.mark.parametrize("origin", list(FOREIGN_ORIGINS))
@pytest.mark.parametrize("route", list(FORM_POSTS))
def test_cross_site_form_posts_change_nothing(tracking_server, route, origin):
    """A page of another site posts a form to user management with the admin's login, as the
    admin's browser would send it. MLflow refuses most of these on its own (its cross-origin check,
    the JSON content type, the sign-up form's CSRF token); none may create a user, a permission or
    an experiment."""
    path, form = FORM_POSTS[route]
    name = f"csrf-{uuid.uuid4().hex[:8]}"
    response = call(tracking_server, "POST", path, tracking_server.admin_auth,
                    data={field: value.format(user=name) for field, value in form.items()},
                    headers={"Origin": foreign_origin(tracking_server, origin),
                             "Referer": f"{foreign_origin(tracking_server, origin)}/page"})
    assert_refused(response, 400, 403)
    assert nothing_named(tracking_server, name)


@pytest.mark.parametrize("route", ["users-create", "experiments-search", "run-artifact"])
def test_a_page_on_another_localhost_port_gets_nothing_with_the_visitor_s_login(tracking_server, team, route):
    """Found here: MLflow trusts every http://localhost:<port> origin with credentials, so any page a
    developer opens from a local dev server could read the team's experiments and files with the
    login their browser holds (MLflow's CORS answer named the page's origin and allowed
    credentials: 200), and call user management (users/create: 200, the user created). Refused now."""
    member1, _ = team
    name, page = f"csrf-{uuid.uuid4().hex[:8]}", b"member1's page"
    ok(call(tracking_server, "PUT", f"{PROXY}/{member1.artifact_root}/page.txt", member1.auth, data=page))
    attempts = {
        "users-create": ("POST", "/api/2.0/mlflow/users/create", tracking_server.admin_auth,
                         {"json": {"username": name, "password": "long-enough-password"}}),
        "experiments-search": ("GET", f"{API}/experiments/search", member1.auth, {"params": {"max_results": 5}}),
        "run-artifact": ("GET", "/get-artifact", member1.auth,
                         {"params": {"run_id": member1.run_id, "path": "page.txt"}}),
    }
    method, path, auth, kwargs = attempts[route]
    response = call(tracking_server, method, path, auth,
                    headers={"Origin": foreign_origin(tracking_server, "another-localhost-port")}, **kwargs)
    assert_refused(response, 403)
    assert member1.experiment_id not in response.text and page not in response.content
    assert nothing_named(tracking_server, name)


@pytest.mark.parametrize("origin", ["the-address-used", "compose-service-name"])
def test_the_ui_s_own_writes_pass_the_origin_check(tracking_server, origin):
    """The UI's writes carry the origin the browser opened. Found here: MLflow refused them (403
    "Cross-origin request blocked") from any address but localhost, e.g. the compose service name
    or a team host name, unless that was also listed in MLFLOW_CORS_ALLOWED_ORIGINS."""
    host = {"the-address-used": f"127.0.0.1:{tracking_server.port}", "compose-service-name": "mlflow:5000"}[origin]
    name = f"ui-write-{uuid.uuid4().hex[:8]}"
    ok(call(tracking_server, "POST", f"{API}/experiments/create", tracking_server.admin_auth,
            json={"name": name}, headers={"Origin": f"http://{host}", "Host": host}))


def test_the_public_server_info_names_nothing_private(tracking_server, s3, postgres):
    """MLflow serves /server-info without a login, by design (clients read its capabilities
    first): it must carry no name of the store, the database or an account."""
    response = requests.get(f"{tracking_server.url}/api/3.0/mlflow/server-info", timeout=30)
    assert response.status_code == 200
    for private in (s3.bucket, s3.endpoint_url, s3.access_key, tracking_server.artifacts_destination,
                    str(postgres.port), tracking_server.admin_username, tracking_server.backend_db):
        assert private not in response.text


def test_under_a_restrictive_default_members_see_nothing_of_each_other(tracking_server_factory):
    """MLFLOW_AUTH_DEFAULT_PERMISSION=NO_PERMISSIONS: another member's experiment, run and files
    are refused on every read and write route, and left out of searches."""
    server = tracking_server_factory(MLFLOW_AUTH_DEFAULT_PERMISSION="NO_PERMISSIONS")
    try:
        accounts = server.create_users("member1", "member2")
        member1, member2 = Member(server, accounts["member1"]), Member(server, accounts["member2"])
        ok(call(server, "PUT", f"{PROXY}/{member2.artifact_root}/notes.txt", member2.auth, data=SECRET))
        attempts = {
            "experiment": ("GET", f"{API}/experiments/get", {"params": {"experiment_id": member2.experiment_id}}),
            "run": ("GET", f"{API}/runs/get", {"params": {"run_id": member2.run_id}}),
            "log-metric": ("POST", f"{API}/runs/log-metric", {"json": {
                "run_id": member2.run_id, "key": "loss", "value": 1.0, "timestamp": 0, "step": 0}}),
            "artifact": ("GET", f"{PROXY}/{member2.artifact_root}/notes.txt", {}),
            "run-artifact": ("GET", "/get-artifact", {"params": {"run_id": member2.run_id, "path": "notes.txt"}}),
            "delete-experiment": ("POST", f"{API}/experiments/delete", {"json": {"experiment_id": member2.experiment_id}}),
        }
        answers = {name: call(server, method, path, member1.auth, **kwargs).status_code
                   for name, (method, path, kwargs) in attempts.items()}
        assert answers == dict.fromkeys(attempts, 403)
        searched = ok(call(server, "POST", f"{API}/experiments/search", member1.auth, json={"max_results": 100}))
        assert member2.experiment_id not in {e["experiment_id"] for e in searched["experiments"]}
        runs = ok(call(server, "POST", f"{API}/runs/search", member1.auth,
                       json={"experiment_ids": [member2.experiment_id]}))
        assert runs.get("runs", []) == []
        assert call(server, "GET", f"{PROXY}/{member2.artifact_root}/notes.txt", member2.auth).content == SECRET
    finally:
        server.stop()


# --------------------------------------------------------------------------- malformed requests


DEEP = 100_000
MALFORMED = {
    "wrong-type": ("/runs/log-metric", json.dumps({"run_id": 5, "key": ["loss"], "value": "high", "timestamp": 0})),
    "invalid-utf8": ("/experiments/create", b'{"name": "caf\xe9-\xff"}'),
    "not-json": ("/experiments/create", b"name=x&artifact_location=file:///etc"),
    "deeply-nested": ("/experiments/create", '{"name": "x", "tags": ' + "[" * DEEP + "]" * DEEP + "}"),
    "deeply-nested-source": ("/model-versions/create", '{"name": "x", "source": ' + "[" * DEEP + "]" * DEEP + "}"),
    "deeply-nested-metric": ("/runs/log-metric", '{"key": ' + "[" * DEEP + "]" * DEEP + "}"),
    # MLflow still reads a body that is a JSON string holding the JSON (older clients encoded
    # twice), with a JSON reader of its own.
    "deeply-nested-in-a-string": ("/experiments/create",
                                  json.dumps('{"name": "x", "tags": ' + "[" * DEEP + "]" * DEEP + "}")),
    "deeply-nested-in-a-string-metric": ("/runs/log-metric", json.dumps('{"key": ' + "[" * DEEP + "]" * DEEP + "}")),
    "a-string-not-json": ("/runs/log-metric", json.dumps("run_id")),
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_bodies_get_a_json_400(tracking_server, team, kind):
    """Each is refused with MLflow's JSON error (400), never a 500 or Flask's HTML page, and the
    server keeps answering. Found here: a body nested deeper than Python's recursion limit was
    Flask's HTML 500, and so was a body that is a JSON string holding deep nesting or no JSON."""
    member1, _ = team
    path, body = MALFORMED[kind]
    response = call(tracking_server, "POST", f"{API}{path}", member1.auth, data=body,
                    headers={"Content-Type": "application/json"})
    assert response.status_code == 400, f"{response.status_code} {response.text[:300]}"
    assert response.json()["error_code"] in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST")
    assert call(tracking_server, "GET", f"{API}/experiments/get", member1.auth,
                params={"experiment_id": member1.experiment_id}).status_code == 200


def test_a_body_encoded_twice_as_older_clients_send_it_still_works(tracking_server):
    """The string bodies refused above are refused for what they hold: one holding a JSON object
    is still read, as MLflow reads it."""
    name = f"twice-{uuid.uuid4().hex[:8]}"
    response = call(tracking_server, "POST", f"{API}/experiments/create", tracking_server.admin_auth,
                    data=json.dumps(json.dumps({"name": name})), headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert not nothing_named(tracking_server, name)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_bodies_of_the_wrong_content_type_are_refused(tracking_server, team, content_type):
    member1, _ = team
    name = f"typed-{uuid.uuid4().hex[:8]}"
    response = call(tracking_server, "POST", f"{API}/experiments/create", member1.auth,
                    data=json.dumps({"name": name}).encode(),
                    headers={"Content-Type": content_type} if content_type else {})
    assert_refused(response, 400, error_code="INVALID_PARAMETER_VALUE")
    assert nothing_named(tracking_server, name)


def send_head_and_some_body(server, auth, path, declared_bytes, sent_bytes):
    """A POST declaring ``declared_bytes`` of JSON of which only ``sent_bytes`` are sent; the
    server's answer (status, body, seconds taken)."""
    credentials = base64.b64encode(":".join(auth).encode()).decode()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
        connection.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                           f"Authorization: Basic {credentials}\r\nContent-Type: application/json\r\n"
                           f"Content-Length: {declared_bytes}\r\n\r\n".encode())
        connection.sendall(b'{"experiment_id": "0", "tags": [{"key": "k", "value": "' + b"v" * sent_bytes)
        answer = http.client.HTTPResponse(connection)
        answer.begin()
        return answer.status, answer.read(), time.monotonic() - started


@pytest.mark.parametrize("route", ["/runs/create", "/runs/log-batch"])
def test_a_gigantic_json_body_is_refused_before_it_is_read(tracking_server, team, route):
    """Found here: MLflow read and parsed a body of any size (a 50 MB runs/create: 8 s of a worker
    thread, then a 400 carrying the database driver's error). A 200 MB body is refused from its
    declared length, with nothing of it read (only 1 MB is sent here, so a server that read it
    would wait for the rest and time out)."""
    member1, _ = team
    runs_before = ok(call(tracking_server, "POST", f"{API}/runs/search", member1.auth,
                          json={"experiment_ids": [member1.experiment_id]})).get("runs", [])
    status, body, seconds = send_head_and_some_body(tracking_server, member1.auth, f"{API}{route}",
                                                    declared_bytes=200 * 1024 * 1024, sent_bytes=1024 * 1024)
    assert status == 413, f"{status} {body[:300]}"
    assert json.loads(body)["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert seconds < 5
    runs_after = ok(call(tracking_server, "POST", f"{API}/runs/search", member1.auth,
                         json={"experiment_ids": [member1.experiment_id]})).get("runs", [])
    assert len(runs_after) == len(runs_before)


# Twice as many slow clients as the harness server has worker threads (GUNICORN_WORKERS x
# GUNICORN_THREADS at their defaults).
SLOW_CLIENTS = 2 * 2 * 8


def seconds_to_answer_while_clients_drip(server, member, openings, drip: bytes):
    """Open a connection per request start in ``openings``, send ``drip`` on each once a second,
    and time a normal call meanwhile; returns (its response, seconds)."""
    connections = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in openings]
    stop = threading.Event()

    def drip_every_second():
        while not stop.wait(1):
            for connection in connections:
                with contextlib.suppress(OSError):
                    connection.sendall(drip)

    try:
        for connection, opening in zip(connections, openings):
            connection.sendall(opening)
        threading.Thread(target=drip_every_second, daemon=True).start()
        time.sleep(1)
        started = time.monotonic()
        answered = requests.get(f"{server.url}{API}/experiments/get", auth=member.auth,
                                params={"experiment_id": member.experiment_id}, timeout=30)
        return answered, time.monotonic() - started
    finally:
        stop.set()
        for connection in connections:
            connection.close()


def test_the_server_answers_others_while_slow_clients_hold_connections(tracking_server, team):
    """Slow-loris: twice as many clients as the server has worker threads (workers x threads) each
    send a request line and then one header line a second, never finishing. Found here: every
    worker thread waited on them without limit and the server stopped answering (a normal call
    timed out). gunicorn's request_header_deadline patch cuts each off GUNICORN_HEADER_TIMEOUT
    (5 s) after it connected, so a normal call waits for at most one round of them."""
    member1, _ = team
    answered, seconds = seconds_to_answer_while_clients_drip(
        tracking_server, member1, [b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"] * SLOW_CLIENTS, b"X-Slow: 1\r\n")
    assert answered.status_code == 200
    assert seconds < 5 + 3, f"answered after {seconds:.1f} s"


def _request_head(server, auth, method, path, length) -> bytes:
    credentials = base64.b64encode(":".join(auth).encode()).decode()
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Basic {credentials}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n").encode()


def test_the_server_answers_others_while_slow_bodies_trickle_in(tracking_server, team):
    """Slow-loris with bodies: twice as many clients as the server has worker threads each send
    complete headers declaring a 10 kB body, then one byte of it a second. Found here: the
    application reads a body in its worker thread without a time limit, every thread waited on
    them and the server stopped answering (a normal call timed out at 30 s). The patch
    request_body_min_rate cuts a body that falls below GUNICORN_BODY_MIN_RATE (1 KiB/s) after
    GUNICORN_BODY_TIMEOUT (5 s) counted from its connection's accept, so a normal call waits for
    at most one round of them. Their uploads, cut short, leave no object behind (found here too:
    each left a truncated object that read as complete)."""
    member1, _ = team
    openings = [_request_head(tracking_server, member1.auth, "POST", f"{API}/runs/search", 10_000) if index % 2 else
                _request_head(tracking_server, member1.auth, "PUT", f"{PROXY}/{member1.artifact_root}/trickle-{index}.bin",
                              10_000)
                for index in range(SLOW_CLIENTS)]
    answered, seconds = seconds_to_answer_while_clients_drip(tracking_server, member1, openings, b"x")
    assert answered.status_code == 200
    assert seconds < 5 + 6, f"answered after {seconds:.1f} s"
    listed = ok(call(tracking_server, "GET", f"{API}/artifacts/list", member1.auth, params={"run_id": member1.run_id}))
    assert not [entry for entry in listed.get("files", []) if entry["path"].startswith("trickle-")]  # no partial upload


def test_an_upload_whose_client_goes_away_midway_leaves_nothing(tracking_server, team):
    """Found here: a client that stopped halfway through a PUT (a crashed job, a dropped link)
    left an object of the bytes that had arrived, listed and downloadable as the artifact."""
    member1, _ = team
    path = f"{PROXY}/{member1.artifact_root}/halfway.bin"
    with socket.create_connection(("127.0.0.1", tracking_server.port), timeout=30) as connection:
        connection.sendall(_request_head(tracking_server, member1.auth, "PUT", path, 1024 * 1024))
        connection.sendall(os.urandom(300 * 1024))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the server notices the close when it reads on
        assert call(tracking_server, "GET", path, member1.auth).status_code == 404
        time.sleep(1)


def test_an_upload_that_pauses_longer_than_the_body_timeout_still_arrives_whole(tracking_server, team):
    """The body rule is a rate, not a deadline: an upload whose network stalls for longer than
    GUNICORN_BODY_TIMEOUT after a good start (a blip mid-checkpoint) is kept and arrives whole."""
    member1, _ = team
    payload = os.urandom(2 * 1024 * 1024)
    path = f"{PROXY}/{member1.artifact_root}/paused.bin"
    with socket.create_connection(("127.0.0.1", tracking_server.port), timeout=60) as connection:
        connection.sendall(_request_head(tracking_server, member1.auth, "PUT", path, len(payload)))
        connection.sendall(payload[:len(payload) // 2])
        time.sleep(8)  # > GUNICORN_BODY_TIMEOUT; 1 MiB already in allows ~1 000 s at 1 KiB/s
        connection.sendall(payload[len(payload) // 2:])
        answer = http.client.HTTPResponse(connection)
        answer.begin()
        assert answer.status == 200, answer.read()[:300]
    assert call(tracking_server, "GET", path, member1.auth).content == payload


@pytest.mark.parametrize("tag", [{"key": "note", "value": "v" * 100_000}, {"key": "k" * 300, "value": "v"}],
                         ids=["long-value", "long-key"])
def test_a_new_run_s_oversized_tag_is_refused_without_database_details(tracking_server, team, tag):
    """Found here: runs/create checked no tag length (set-tag does), and a 100 kB value came back as
    a 400 quoting the database driver's error and the INSERT statement."""
    member1, _ = team
    runs_before = ok(call(tracking_server, "POST", f"{API}/runs/search", member1.auth,
                          json={"experiment_ids": [member1.experiment_id]})).get("runs", [])
    response = call(tracking_server, "POST", f"{API}/runs/create", member1.auth,
                    json={"experiment_id": member1.experiment_id, "tags": [tag]})
    assert_refused(response, 400, error_code="INVALID_PARAMETER_VALUE")
    assert "SQL" not in response.text and "psycopg2" not in response.text
    runs_after = ok(call(tracking_server, "POST", f"{API}/runs/search", member1.auth,
                         json={"experiment_ids": [member1.experiment_id]})).get("runs", [])
    assert len(runs_after) == len(runs_before)


def test_an_oversized_param_is_truncated_as_mlflow_does(tracking_server, team):
    """MLflow keeps the first 6000 characters of a param value (its documented limit): a 1 MB
    value is not stored whole."""
    member1, _ = team
    ok(call(tracking_server, "POST", f"{API}/runs/log-parameter", member1.auth,
            json={"run_id": member1.run_id, "key": "oversized", "value": "x" * 1_000_000}))
    params = ok(call(tracking_server, "GET", f"{API}/runs/get", member1.auth,
                     params={"run_id": member1.run_id}))["run"]["data"]["params"]
    assert {p["key"]: len(p["value"]) for p in params}["oversized"] == 6000


# --------------------------------------------------------------------------- secrets


def test_the_server_log_holds_no_secret_after_the_attacks(tracking_server, s3, postgres):
    """Last in this module, so the log holds every refusal above. The S3 keys and the database
    password never appear; the admin's password only in the first-start banner (entrypoint.sh
    shows it once, by design: docs/server.md, "The admin password")."""
    log = tracking_server.log_file.read_text(errors="replace")
    assert "serving on port" in log
    for secret in (s3.secret_key, postgres.password):
        assert secret not in log
    assert log.count(tracking_server.admin_password) <= 1
