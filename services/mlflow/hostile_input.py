"""What a team server refuses that MLflow 3.17.2 accepts (issue 16, "Hostile input").

Installed by server_patches.py (patch ``hostile_input``, required): one Flask before-request hook,
added after basic-auth's, so that an anonymous caller still gets MLflow's 401 and a caller MLflow
already refuses its 403. It applies to every caller, admins included, except where it asks
whether the caller may read something: admins may read everything.

* **Artifact paths are canonical.** MLflow's auth judges a proxied artifact path by its first
  segment (the experiment id) while the store keeps, or a real S3 server normalises, another
  spelling: ``./2/…`` and ``02/…`` were judged against the default permission instead of
  experiment 2's, and backslashes went through as part of a key (``artifacts\\..\\..\\x``).
  Every artifact path the server is given (the proxy's upload, download, listing and delete, and
  the ``path`` of the run, model-version and logged-model artifact routes) is decoded as MLflow
  decodes it and refused with 400 ``INVALID_PARAMETER_VALUE`` if it holds a backslash, a control
  character, an empty, ``.`` or ``..`` segment, a leading ``/``, a name longer than 255 bytes or
  more than 1024 bytes in all (S3's key limit), or, through the proxy, an experiment id with a
  leading zero.
* **Experiments get the server's artifact location.** experiments/create took any
  ``artifact_location`` (another user's folder, ``file:///etc``, the bucket's other prefixes),
  and the runs of such an experiment read and write there with the server's credentials.
  A location given by the caller is refused: the server assigns ``mlflow-artifacts:/<id>``.
* **A model version is backed by files its caller may read.** model-versions/create took a
  source naming another user's run folder in the server's bucket (``s3://<bucket>/<prefix>/2/
  <run>/artifacts``, no ``run_id``, or the caller's own ``run_id``), and
  ``/model-versions/get-artifact`` then served those files with the server's S3 credentials.
  Stock MLflow has the same hole. A source inside the server's artifact store (its
  ``s3://bucket/prefix``, ``mlflow-artifacts:`` or the proxy's URL) must lie in the artifacts of a
  run or logged model (found in the tracking store, not guessed from the path) that the caller
  may read; anywhere else in the server's bucket is refused outright. The same check runs again
  on every read through a version, so versions registered before it, or whose run the caller has
  since been denied, serve nothing the caller could not read directly. A refusal is 403
  ``PERMISSION_DENIED``, whether the run is denied or does not exist, so that the answer tells
  nothing about which ids exist.
* **A request body nested too deeply is invalid JSON**: MLflow's 400, where the RecursionError of
  Python's parser escaped as Flask's HTML 500.
* **A body that is a JSON string must hold a JSON object**: MLflow still reads such bodies (older
  clients encoded twice) with a JSON reader of its own, so a string holding deep nesting, invalid
  JSON or a bare word was Flask's HTML 500. It is read here first, depth-limited, and refused
  with a 400 unless it holds an object.
* **A new run's tags are within MLflow's limits** (a 250-character key, an 8000-character value,
  as set-tag checks them): runs/create checked neither, and an oversized value came back as a 400
  quoting the database's error and the ``INSERT INTO tags`` statement.
* **A JSON call's body is at most 16 MiB** (413, before basic-auth reads it to find the
  experiment): MLflow read and parsed any size, a 50 MB runs/create took a worker thread 8 s and
  the memory of the parsed body. The artifact routes, which stream, are not limited.
* **Only the server's own origin and the configured ones act with a browser's credentials.**
  MLflow's security middleware trusts every ``http://localhost:<any port>`` page: its CORS
  answers let such a page read everything with the visitor's cached login (experiments, runs,
  ``/get-artifact``), and its cross-origin check let that page's writes through (only the JSON
  content type, and the 401 that basic-auth gives a preflight, stop a browser sending them). It
  refused instead the UI's own writes from a team host name (``http://mlflow:5000``,
  ``https://mlflow.team.example``), unless that was listed as another origin. A request whose ``Origin`` is neither the address it was sent to (its ``Host``)
  nor one of ``MLFLOW_SERVER_CORS_ALLOWED_ORIGINS`` is refused with 403, on every route and method.
"""

import fnmatch
import functools
import re
import urllib.parse

from flask import current_app, jsonify, request
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

# Where the proxy's routes carry an artifact path after the route itself (MLflow's
# MlflowArtifactsService routes, under /api and /ajax-api, and after any static prefix).
_PROXY_ROUTE = re.compile(
    r"/(?:ajax-)?api/2\.0/mlflow-artifacts/(?:artifacts|mpu/(?:create|complete|abort)|presigned)(?:/(?P<path>.*))?$",
    re.DOTALL)
# MLflow's endpoints (view function names) whose ``path`` query parameter names an artifact
# relative to a run, a model version or a logged model.
_ARTIFACT_PATH_ENDPOINTS = ("serve_artifacts", "serve_model_version_artifact", "serve_get_logged_model_artifact",
                            "_list_artifacts", "_list_logged_model_artifacts")
_CREATE_EXPERIMENT, _CREATE_MODEL_VERSION, _CREATE_RUN = "_create_experiment", "_create_model_version", "_create_run"
_READ_MODEL_VERSION_ARTIFACT = "serve_model_version_artifact"
ENDPOINTS = (*_ARTIFACT_PATH_ENDPOINTS, _CREATE_EXPERIMENT, _CREATE_MODEL_VERSION, _CREATE_RUN)

# MLflow's clients split log-batch calls at 1 MB (MAX_BATCH_LOG_REQUEST_SIZE), a dataset's schema is
# at most 1 MB and the UI's upload-artifact route 10 MB (MLflow's own limit): 16 MiB leaves room for traces and the like while a worker thread reading
# and parsing a body stays well under a second and a few hundred MB.
MAX_API_BODY_BYTES = 16 * 1024 * 1024

# S3 keeps keys of up to 1024 bytes; a longer name than 255 bytes cannot be downloaded to the
# file systems clients use.
MAX_PATH_BYTES = 1024
MAX_NAME_BYTES = 255
# MLflow's validate_path_is_safe decodes up to this many times; a path still encoded after that
# is refused there too.
_DECODE_ROUNDS = 10
_LEADING_ZERO_ID = re.compile(r"0\d+")
_PROXY_URL_PATH = "/api/2.0/mlflow-artifacts/artifacts/"


def _decoded(value: str) -> str | None:
    for _ in range(_DECODE_ROUNDS):
        once = urllib.parse.unquote(value)
        if once == value:
            return value
        value = once
    return None


def artifact_path_problem(path: str, *, experiment_relative: bool) -> str | None:
    """Why ``path`` (as the request gave it) is not a canonical artifact path, or None."""
    decoded = _decoded(path)
    if decoded is None:
        return "is encoded too many times"
    if not decoded:
        return None  # the root of a listing
    if any(ord(character) < 0x20 or ord(character) == 0x7F for character in decoded):
        return "holds a control character"
    if "\\" in decoded:
        return "holds a backslash"
    if decoded.startswith("/"):
        return "is absolute"
    names = decoded.removesuffix("/").split("/")  # a trailing slash names a folder (listings)
    if any(name in ("", ".", "..") for name in names):
        return "has an empty, '.' or '..' segment"
    if len(decoded.encode()) > MAX_PATH_BYTES or any(len(name.encode()) > MAX_NAME_BYTES for name in names):
        return f"is longer than {MAX_PATH_BYTES} bytes or has a name longer than {MAX_NAME_BYTES}"
    if experiment_relative and _LEADING_ZERO_ID.fullmatch(names[0]):
        return "names an experiment id with a leading zero"
    return None


def _refuse_non_canonical(path: str, *, experiment_relative: bool) -> None:
    if problem := artifact_path_problem(path, experiment_relative=experiment_relative):
        raise MlflowException.invalid_parameter_value(f"Invalid artifact path: it {problem}")


def _denied(message: str) -> MlflowException:
    return MlflowException(message, error_code=PERMISSION_DENIED)


class ArtifactStore:
    """The server's artifact destination (s3://bucket[/prefix]) and who may read what is in it."""

    def __init__(self, destination: str, auth):
        parsed = urllib.parse.urlparse(destination)
        self.bucket = parsed.netloc.lower()
        self.prefix = parsed.path.strip("/")
        self._auth = auth

    def relative_path(self, uri: str) -> str | None:
        """``uri`` as a path relative to the destination; None when it is outside the bucket.

        Raises PERMISSION_DENIED for the bucket's other prefixes (other servers, other tenants):
        the server's credentials reach them, the server's users must not."""
        decoded = _decoded(uri) or uri
        parsed = urllib.parse.urlparse(decoded)
        if parsed.scheme == "mlflow-artifacts":
            return parsed.path.removeprefix("/")
        if parsed.scheme in ("http", "https") and _PROXY_URL_PATH in parsed.path:
            return parsed.path.split(_PROXY_URL_PATH, 1)[1]
        # Bucket names are lower case, but some S3 servers match them without regard to case.
        if parsed.scheme != "s3" or parsed.netloc.lower() != self.bucket:
            return None
        key = parsed.path.removeprefix("/")
        if not self.prefix:
            return key
        if key.startswith(f"{self.prefix}/"):
            return key.removeprefix(f"{self.prefix}/")
        raise _denied("Model version source is in this server's bucket but outside its artifact destination")

    def _owner_root(self, relative: str) -> tuple[str, str] | None:
        """(kind, id) of the run or logged model whose artifacts hold ``relative``, from the
        tracking store: the path's shape only says which id to look up."""
        from mlflow.server.handlers import _get_tracking_store

        names = relative.split("/")
        if len(names) >= 3 and names[2] == "artifacts":
            kind, owner_id = "run", names[1]
        elif len(names) >= 4 and names[1] == "models" and names[3] == "artifacts":
            kind, owner_id = "logged_model", names[2]
        else:
            return None
        store = _get_tracking_store()
        try:
            if kind == "run":
                root = store.get_run(owner_id).info.artifact_uri
            else:
                root = store.get_logged_model(owner_id).artifact_location
        except MlflowException:
            return None
        root_path = self.relative_path(root)
        if root_path is None or not f"{relative}/".startswith(f"{root_path.rstrip('/')}/"):
            return None
        return kind, owner_id

    def _caller_may_read(self, kind: str, owner_id: str) -> bool:
        if self._auth is None or self._auth.sender_is_admin():
            return True
        if kind == "run":
            return self._auth._authorize_run_id(owner_id, "read")
        return self._auth._authorize_logged_model_id(owner_id, "read")

    def check_version_source(self, uri: str, refusal: str) -> None:
        """Refuse ``uri`` as the files of a model version unless the caller may read them."""
        relative = self.relative_path(uri)
        if relative is None:
            return
        _refuse_non_canonical(relative, experiment_relative=True)
        owner = self._owner_root(relative)
        if owner is None or not self._caller_may_read(*owner):
            raise _denied(refusal)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _host_and_port(netloc: str, scheme: str) -> tuple[str, int | None]:
    parsed = urllib.parse.urlsplit(f"//{netloc}")
    return (parsed.hostname or "").lower(), parsed.port or _DEFAULT_PORTS.get(scheme)


def origin_refused(origin: str | None, host: str, allowed_origins: list[str]) -> bool:
    """Whether a request from ``origin`` (its Origin header) sent to ``host`` (its Host header)
    must be refused: browsers send Origin on every cross-origin request and same-origin write,
    so the UI's own writes carry the address the browser opened, and other clients send none."""
    if not origin:
        return False
    scheme = urllib.parse.urlsplit(origin).scheme
    if scheme in _DEFAULT_PORTS and _host_and_port(urllib.parse.urlsplit(origin).netloc, scheme) == \
            _host_and_port(host, scheme):
        return False
    return not any(fnmatch.fnmatchcase(origin, allowed) if "*" in allowed else origin == allowed
                   for allowed in allowed_origins)


def _refuse_oversized_tags(tags) -> None:
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_TAG_VAL_LENGTH

    for tag in tags:
        if len(tag.key) > MAX_ENTITY_KEY_LENGTH or len(tag.value) > MAX_TAG_VAL_LENGTH:
            raise MlflowException.invalid_parameter_value(
                f"Tag '{tag.key[:MAX_ENTITY_KEY_LENGTH]}' is over MLflow's limits: keys of at most "
                f"{MAX_ENTITY_KEY_LENGTH} characters, values of at most {MAX_TAG_VAL_LENGTH}")


def _refuse_foreign_origin() -> None:
    from mlflow.server.security import get_allowed_origins

    if origin_refused(request.headers.get("Origin"), request.host, get_allowed_origins()):
        raise _denied("Cross-origin request refused: this server answers browsers only on its own address "
                      "and the origins in MLFLOW_SERVER_CORS_ALLOWED_ORIGINS")


def _same_rule_for_mlflow_s_cross_origin_check(_origin, _method, allowed_origins) -> bool:
    """MLflow's check of state-changing API calls (``should_block_cors_request``), which runs
    before this module's hook, decided by the same rule, so the UI's own writes from a team host
    name pass it."""
    return origin_refused(request.headers.get("Origin"), request.host, allowed_origins)


def refuse_oversized_body():
    """A before-request hook ahead of every other, basic-auth's included (which parses the body to
    find the experiment a call is about): a JSON call whose declared length is over the limit is
    answered 413 before anything reads it; a chunked one is cut off at the limit as it is read
    (Werkzeug's 413)."""
    if _PROXY_ROUTE.search(request.path):
        return None
    request.max_content_length = MAX_API_BODY_BYTES
    if (request.content_length or 0) <= MAX_API_BODY_BYTES:
        return None
    refusal = jsonify(error_code="REQUEST_LIMIT_EXCEEDED",
                      message=f"Request body of {request.content_length} bytes is over this server's limit of "
                              f"{MAX_API_BODY_BYTES} bytes for API calls; artifacts go through the artifact routes")
    refusal.status_code = 413
    return refusal


def _json_error_400(message: str):
    refusal = jsonify(error_code="INVALID_PARAMETER_VALUE", message=message)
    refusal.status_code = 400
    return refusal


def refuse_a_string_body_without_an_object():
    """A before-request hook, second after refuse_oversized_body: a JSON body that is a string is
    read again as MLflow's handlers will read it, but depth-limited, and refused unless it holds
    a JSON object."""
    if _PROXY_ROUTE.search(request.path) or not request.is_json:
        return None
    body = request.get_json(silent=True)
    if not isinstance(body, str):
        return None
    try:
        inner = current_app.json.loads(body)
    except ValueError as error:
        return _json_error_400(f"The request body is a JSON string that does not hold valid JSON ({error}); "
                               "send the JSON object itself")
    if not isinstance(inner, dict):
        return _json_error_400("The request body is a JSON string that does not hold a JSON object; "
                               "send the JSON object itself")
    return None


def refuse_hostile_request(store: ArtifactStore) -> None:
    """The before-request hook (wrapped by MLflow's catch_mlflow_exception, which turns the
    refusals into MLflow's JSON errors)."""
    from mlflow.protos.model_registry_pb2 import CreateModelVersion
    from mlflow.protos.service_pb2 import CreateExperiment, CreateRun
    from mlflow.server.handlers import _get_model_registry_store, _get_request_message

    _refuse_foreign_origin()
    if proxied := _PROXY_ROUTE.search(request.path):
        _refuse_non_canonical(proxied.group("path") or "", experiment_relative=True)
        _refuse_non_canonical(request.args.get("path", ""), experiment_relative=True)
        return
    endpoint = request.endpoint
    if endpoint in _ARTIFACT_PATH_ENDPOINTS:
        _refuse_non_canonical(request.args.get("path", ""), experiment_relative=False)
    if endpoint == _CREATE_EXPERIMENT and _get_request_message(CreateExperiment()).artifact_location:
        raise MlflowException.invalid_parameter_value(
            "artifact_location cannot be chosen on this server: it assigns every experiment's "
            "location itself (mlflow-artifacts:/<experiment id>); create the experiment without one")
    elif endpoint == _CREATE_MODEL_VERSION:
        source = _get_request_message(CreateModelVersion()).source
        store.check_version_source(source, f"Model version source '{source}' is in this server's artifact store "
                                           "but not in the artifacts of a run or logged model you may read")
    elif endpoint == _CREATE_RUN:
        _refuse_oversized_tags(_get_request_message(CreateRun()).tags)
    elif endpoint == _READ_MODEL_VERSION_ARTIFACT:
        files = _get_model_registry_store().get_model_version_download_uri(
            request.args.get("name"), request.args.get("version"))
        store.check_version_source(files, "This model version's files are not in a run or logged model you may read")


def _refusing_deep_nesting(loads):
    """``loads`` (the app's JSON reader) with a body nested deeper than Python's recursion limit
    read as invalid JSON: a ValueError, which MLflow answers with its JSON 400, instead of a
    RecursionError that escapes every handler as Flask's HTML 500."""

    @functools.wraps(loads)
    def loads_within_depth(s, **kwargs):
        try:
            return loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None

    return loads_within_depth


def install(app, auth, destination: str) -> None:
    """Add the hook to ``app``, after basic-auth's (``auth``: MLflow's auth module, or None)."""
    from mlflow.server import security
    from mlflow.server.handlers import catch_mlflow_exception

    security.should_block_cors_request = _same_rule_for_mlflow_s_cross_origin_check
    app.json.loads = _refusing_deep_nesting(app.json.loads)
    store = ArtifactStore(destination, auth)

    @catch_mlflow_exception
    def refuse_hostile_input():
        refuse_hostile_request(store)

    app.before_request(refuse_hostile_input)
    app.before_request_funcs.setdefault(None, [])[:0] = [refuse_oversized_body, refuse_a_string_body_without_an_object]
