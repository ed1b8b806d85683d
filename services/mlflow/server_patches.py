"""Server-side behaviour cvops changes in MLflow: the registry of patches, and each patch's reasons.

Every patch reaches into names MLflow (or gunicorn, SQLAlchemy) does not promise to keep, so each
declares the names it touches and the versions it was verified on (PATCHES below). The server
applies a patch only on a verified version: on another one it starts with that patch off and logs
one line saying which and why (MLflow's stock code path serves instead). The patches that keep the
server safe (``required``: without them clients are handed what they cannot use, or can claim to
be someone else) refuse to start on an unverified version unless CVOPS_ALLOW_UNVERIFIED_MLFLOW=1,
which tries them anyway. CVOPS_SERVER_PATCHES=all (default) | off | a comma list chooses
explicitly. docs/server.md, "Server patches" and "Upgrading MLflow".

Proxied artifacts only. With an S3 destination MLflow's /server-info advertises multipart
transfers, and clients then fetch *presigned S3 URLs* for every download and for large uploads.
Those URLs name the S3 endpoint as the server sees it (e.g. http://minio:9000 inside the compose
network), which team members' machines cannot reach: downloads hang for minutes, then fail.

So the server (1) advertises no multipart support and (2) answers the presigned/multipart
endpoints with MLflow's own "not supported" errors (HTTP 501), which clients that force
MLFLOW_ENABLE_PROXY_MULTIPART_* on treat as "use the proxy". Every byte flows through the
tracking server and a client needs nothing but the tracking URL.

Streamed uploads. MLflow 3.17.2 spools each proxied upload to a temp file and only then sends it to
S3, so a multi-GB checkpoint needs that much free disk in the container and takes receive time
plus S3 time. Registering an S3 repository with MLflow's StreamUploadMixin makes the upload handler
pass the request body straight to boto3's multipart upload (parts of 8 MB in memory).

The caller's user row from the auth cache. basic-auth reads the caller's row from the auth
database again after authenticating: for "is the caller an admin?" (asked on nearly every
request) and, for a user who is not an admin, for the id its grants are looked up by. The password
check just before was answered by MLflow's per-worker credential cache, which holds that same row.
Answering those reads from the cached row saves a pool checkout, a SELECT and a COMMIT each
(11.1 -> 9.1 ms per log_metric for an admin, docs/performance.md). It is exactly as fresh as the
credential: MLflow drops a user's cache entries when that user is changed, in the worker that
made the change; other workers follow within MLFLOW_AUTH_CACHE_TTL_SECONDS, as they already do
for a changed password. Grants are still read on every request: a revoked permission applies at
once.

Compact JSON. MLflow's handlers write every response with ``json.dumps(indent=2)``, which runs
Python's pure-Python encoder (the C one only serves compact output) and more than doubles the
body: a page of 10 typical runs is 83 KB pretty and 35 KB compact, 5.5 vs 3.6 ms to encode. The
JSON is the same document either way. Runs, searches and metric histories (what the experiment
page, run page and chart view wait for) are encoded straight from their fields: a page of 100 runs
with 200 params each took 88 ms through MessageToDict's generic walk and takes 42 ms; the bytes
are MLflow's (tests/integration/test_server_responses.py).

Pings without a round trip. MLflow's engines check every pooled connection before use with a
``SELECT 1`` (pool_pre_ping), so that a connection PostgreSQL closed while it sat in the pool (a
restart, idle_session_timeout, pg_terminate_backend) is replaced instead of failing a request.
PostgreSQL never writes to an idle session except to end it: it then sends the error that says
why and closes the socket. So a pooled connection whose socket has nothing to read is alive as far
as a ping could tell, and only one with something waiting is pinged for real (and replaced when that
fails, as before). MLflow never LISTENs, which would let notifications arrive on idle sessions.
That saves a round trip per checkout (0.14 ms on an idle machine, ~0.3 ms of a log_metric measured
side by side), on every request and on each extra checkout that the permission check of a user who
is not an admin makes.

A missing artifact is a 404. MLflow's S3 repository lets boto3's "Not Found" escape as an
INTERNAL_ERROR (HTTP 500) whose message names the bucket and the object's key; MLflow's client
retries a 500 with backoff, so downloading a wrong path took 4-5 minutes to fail. The repository
below answers a missing object with RESOURCE_DOES_NOT_EXIST (HTTP 404, which clients do not
retry), naming only the path as the request gave it (relative to the artifact root). Listing a
path that holds nothing is an empty listing, as before (S3 has no folders).

Run answers without links to logged models are not redacted. For a user who is not an admin,
MLflow parses every runs/get and runs/search answer back into protobuf to withhold links to
logged models the user may be denied, and finds none in runs that have none: 5–7 ms of a page
of 10 typical runs (docs/performance.md), growing with the page (the UI asks for 100). An answer in
which no logged model is named cannot need it, so only those that name one are checked.

What a team server refuses that MLflow accepts (canonical artifact paths, no experiment artifact
location chosen by the caller, model-version sources the caller may read): hostile_input.py.
A run's user is the login that created it (servers with basic-auth), not the client's claim:
run_attribution.py. The readiness probe /ready (both databases and the bucket): readiness.py. A database
error's 503 without the SQL, ids or host, and one log line for it: database_errors.py. The UI's default view for
new browsers: ui_defaults.py. Metric writes, run reads and searches in
one or two PostgreSQL statements: tracking_store.py.
"""

import contextlib
import functools
import importlib
import json
import logging
import math
import os
import select
import socket
import time
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import Callable

# Nothing from MLflow is imported up here: this module is imported on whatever MLflow is installed
# (by server_setup.py before the server starts, by gunicorn.conf.py), and a name MLflow moved must
# turn its patch off, not stop the import. Each install function imports what it uses.

# gunicorn's own logger: what it writes reaches the server log at the configured level.
_logger = logging.getLogger("gunicorn.error")

SELECTION_VARIABLE = "CVOPS_SERVER_PATCHES"
# The operator's word that the server may start on an MLflow its safety patches were not verified
# on: those are tried; the optimisations stay off.
ALLOW_UNVERIFIED_VARIABLE = "CVOPS_ALLOW_UNVERIFIED_MLFLOW"
# Every selected patch is applied whatever the versions: how infra/check-mlflow-upgrade.sh runs each
# patch's tests on a candidate MLflow. Never for a server people use.
TRY_UNVERIFIED_VARIABLE = "CVOPS_TRY_UNVERIFIED_PATCHES"
# For tests (docs/server.md): the guard treats MLflow as this version as well as the installed one.
# A patch counts as verified only when both are, so it can turn patches off and never on.
PRETEND_VERSION_VARIABLE = "CVOPS_PRETEND_MLFLOW_VERSION"
ALL, OFF = "all", "off"
_TRUE = ("1", "true", "yes", "on")
# Looked up only where the server runs the basic-auth app: importing it elsewhere would load it.
AUTH_MODULE = "mlflow.server.auth"

MLFLOW_VERIFIED = {"mlflow": ("3.17.2",)}


@dataclass(frozen=True, eq=False)
class Patch:
    name: str
    install: Callable  # install(auth): auth is MLflow's basic-auth module, None without basic-auth
    # "module:attribute.path" of every name the patch relies on; all are looked up before it installs.
    touches: tuple[str, ...]
    verified: dict = field(default_factory=lambda: MLFLOW_VERIFIED)  # package -> versions
    # What is lost without the patch, for the patches that keep the server safe; None for the rest.
    at_stake: str | None = None
    needs_auth: bool = False
    stage: str = "worker"  # "worker": each worker after loading the app; "gunicorn": config load


class PatchSelectionError(Exception):
    pass


class PatchNotApplicable(Exception):
    """Raised by an install function that finds MLflow not in the state the patch expects."""


@dataclass
class Plan:
    enabled: list
    notes: list  # one line per patch left off, or tried on a version it was not verified on


def resolve(name: str):
    module_name, _, attribute_path = name.partition(":")
    target = importlib.import_module(module_name)
    for attribute in attribute_path.split(".") if attribute_path else ():
        target = getattr(target, attribute)
    return target


def _versions_seen(package: str, environ) -> list[str]:
    versions = [metadata.version(package)]
    if package == "mlflow" and environ.get(PRETEND_VERSION_VARIABLE):
        versions.append(environ[PRETEND_VERSION_VARIABLE])
    return versions


def unverified_because(patch: Patch, environ=os.environ) -> str | None:
    """None when every package the patch touches is at a version it was verified on, else why not."""
    for package, verified in patch.verified.items():
        for version in _versions_seen(package, environ):
            if version not in verified:
                return f"verified on {package} {', '.join(verified)}, not on {version}"
    return None


def selected_names(environ=os.environ) -> list[str]:
    value = (environ.get(SELECTION_VARIABLE) or ALL).strip()
    if value == ALL:
        return list(PATCHES_BY_NAME)
    if value == OFF:
        return []
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in PATCHES_BY_NAME]
    if unknown or not names:
        raise PatchSelectionError(
            f"{SELECTION_VARIABLE}={value!r}: unknown patch {', '.join(map(repr, unknown))}; expected "
            f"{ALL}, {OFF} or a comma list of: {', '.join(PATCHES_BY_NAME)}")
    return names


def _flag(variable: str, environ) -> bool:
    return environ.get(variable, "").strip().lower() in _TRUE


def plan(environ=os.environ) -> Plan:
    """Which patches this server applies, and a line for each one it leaves off or tries unverified.

    Raises PatchSelectionError for an unknown name, or when a patch the server's safety rests on
    is not verified for the installed versions and the operator has not allowed that."""
    selected = set(selected_names(environ))
    enabled, notes, refusals = [], [], []
    for patch in PATCHES:
        if patch.name not in selected:
            if patch.at_stake:
                notes.append(f"WARNING: patch {patch.name} off ({SELECTION_VARIABLE}): without it {patch.at_stake}")
            continue
        reason = unverified_because(patch, environ)
        if _flag(TRY_UNVERIFIED_VARIABLE, environ):
            override = TRY_UNVERIFIED_VARIABLE
        elif patch.at_stake and _flag(ALLOW_UNVERIFIED_VARIABLE, environ):
            override = ALLOW_UNVERIFIED_VARIABLE
        else:
            override = None
        if reason is None:
            enabled.append(patch)
        elif override:
            enabled.append(patch)
            notes.append(f"WARNING: patch {patch.name} tried unverified ({override}): {reason}")
        elif patch.at_stake:
            refusals.append(f"patch {patch.name} is {reason}; without it {patch.at_stake}")
        else:
            notes.append(f"patch {patch.name} off: {reason}")
    if refusals:
        raise PatchSelectionError(
            "refusing to start: " + "; ".join(refusals) + ". Check the new version first "
            "(infra/check-mlflow-upgrade.sh VERSION, docs/server.md \"Upgrading MLflow\"), or set "
            f"{ALLOW_UNVERIFIED_VARIABLE}=1 to start anyway: these patches are then tried, and left off "
            "with a warning where MLflow no longer has the names they need")
    return Plan(enabled, notes)


_applied_stages = set()


def apply(stage: str = "worker") -> None:
    """Install this stage's patches of plan() (server_setup.py already logged and checked it)."""
    if stage in _applied_stages:
        return
    _applied_stages.add(stage)
    auth = sys.modules.get(AUTH_MODULE)
    for patch in plan().enabled:
        if patch.stage != stage or (patch.needs_auth and auth is None):
            continue
        try:
            for name in patch.touches:
                if auth is not None or not name.startswith(AUTH_MODULE + ":"):
                    resolve(name)
            patch.install(auth)
        except (ImportError, AttributeError, PatchNotApplicable) as error:
            if patch.at_stake and not any(_flag(variable, os.environ) for variable in
                                          (ALLOW_UNVERIFIED_VARIABLE, TRY_UNVERIFIED_VARIABLE)):
                raise RuntimeError(f"patch {patch.name} cannot be applied ({error!r}): "
                                   f"without it {patch.at_stake}") from error
            _logger.error("patch %s off: this MLflow lacks a name it needs (%r)", patch.name, error)


# --------------------------------------------------------------------------- proxied_artifacts

# handlers' capability checks -> the exception (in mlflow.exceptions) each raises when a
# repository lacks the capability.
_REFUSED_CAPABILITIES = {
    "_validate_support_multipart_upload": "_UnsupportedMultipartUploadException",
    "_validate_support_multipart_download": "_UnsupportedMultipartDownloadException",
    "_validate_support_presigned_upload": "_UnsupportedPresignedUploadException",
    "_validate_support_presigned_download": "_UnsupportedPresignedDownloadException",
}
_SERVER_INFO_TRANSFER_KEYS = ("SERVER_INFO_MULTIPART_UPLOADS_ENABLED", "SERVER_INFO_MULTIPART_DOWNLOADS_ENABLED")


def _without_presigned_transfers(build_payload, keys):
    @functools.wraps(build_payload)
    def build():
        payload = build_payload()
        payload.update(dict.fromkeys(keys, False))
        return payload

    return build


def _refuse(exception_class):
    def validate(_artifact_repo):
        raise exception_class()

    return validate


def _install_proxied_artifacts(_auth):
    from mlflow import exceptions
    from mlflow.server import handlers
    from mlflow.utils import server_info

    for check, exception_name in _REFUSED_CAPABILITIES.items():
        setattr(handlers, check, _refuse(getattr(exceptions, exception_name)))
    keys = [getattr(server_info, key) for key in _SERVER_INFO_TRANSFER_KEYS]
    handlers.build_server_info_payload = _without_presigned_transfers(handlers.build_server_info_payload, keys)


# --------------------------------------------------------------------------- s3_artifact_repository

def _install_s3_artifact_repository(_auth):
    import s3_artifacts
    from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry

    _artifact_repository_registry.register("s3", s3_artifacts.ProxiedS3ArtifactRepository)


# --------------------------------------------------------------------------- compact_json, ping_on_demand, auth

def _compact(message_to_json, plain_messages=frozenset()):
    @functools.wraps(message_to_json)
    def compact(message, *, pretty=True, convert_int64_to_number=True):
        if convert_int64_to_number and type(message) in plain_messages:
            return json.dumps(_plain_dict(message), separators=(",", ":"))
        return message_to_json(message, pretty=False, convert_int64_to_number=convert_int64_to_number)

    return compact


def _json_double(value):
    """A double as protobuf's MessageToDict gives it: the special values as their JSON names."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _enum_name(member):
    # A proto2 enum is closed: a field can only hold one of its values.
    return lambda number: member.enum_type.values_by_number[number].name


def _plain_dict(message):
    """What MLflow's message_to_json encodes for a message of strings, int64s (as numbers),
    doubles, enums (by name) and such messages (_only_plain_fields), without MessageToDict's
    per-field dispatch."""
    encoded = {}
    for member, value in message.ListFields():
        if member.type == member.TYPE_MESSAGE:
            convert = _plain_dict
        elif member.type == member.TYPE_DOUBLE:
            convert = _json_double
        elif member.type == member.TYPE_ENUM:
            convert = _enum_name(member)
        else:
            convert = None
        if member.is_repeated:
            encoded[member.name] = [convert(item) for item in value] if convert else list(value)
        else:
            encoded[member.name] = convert(value) if convert else value
    return encoded


def _only_plain_fields(descriptor) -> bool:
    return all(member.type in (member.TYPE_STRING, member.TYPE_INT64, member.TYPE_DOUBLE)
               or (member.type == member.TYPE_ENUM and member.enum_type.is_closed)
               or (member.type == member.TYPE_MESSAGE and not member.message_type.GetOptions().map_entry
                   and _only_plain_fields(member.message_type))
               for member in descriptor.fields)


def _has_unread_data(dbapi_connection) -> bool:
    poller = select.poll()  # poll, not select: file descriptors above 1023 are fine
    poller.register(dbapi_connection.fileno(), select.POLLIN)
    return bool(poller.poll(0))  # also true on POLLHUP/POLLERR, which need no registering


def _ping_only_if_spoken_to(do_ping):
    @functools.wraps(do_ping)
    def ping(self, dbapi_connection):
        if dbapi_connection.closed or _has_unread_data(dbapi_connection):
            return do_ping(self, dbapi_connection)
        return True

    return ping


def _caller_from_the_auth_cache(auth):
    from flask import has_request_context, request

    uncached_get_user = auth.store.get_user

    # A plain cache lookup: MLflow's _authenticate_cached would check the password again on a miss,
    # and it fills the cache through store.get_user, which would come back here.
    @functools.wraps(uncached_get_user)
    def get_user(username):
        credentials = request.authorization if has_request_context() else None
        if (auth._USER_AUTH_CACHE is not None and credentials is not None and credentials.type == "basic"
                and credentials.username == username):
            key = auth._auth_cache_key(username, credentials.password)
            with auth._USER_AUTH_CACHE_LOCK:
                user = auth._USER_AUTH_CACHE.get(key)
            if user is not None:
                return user
        return uncached_get_user(username)

    return get_user


# Every link MLflow's run redaction withholds (a model input, a model output, a metric's model)
# names its logged model under this key (preserving_proto_field_name), so an answer without it
# has nothing to withhold. A param or tag that happens to contain the text only costs the check.
_MODEL_LINK_KEY = b'"model_id"'


def _redact_only_with_model_links(redact):
    @functools.wraps(redact)
    def redact_if_linked(response):
        if response.is_streamed or _MODEL_LINK_KEY in response.get_data():
            redact(response)

    return redact_if_linked



def _install_compact_json(auth):
    from mlflow.protos.service_pb2 import GetMetricHistory, GetMetricHistoryBulkInterval, GetRun, SearchRuns
    from mlflow.server import handlers

    # The answers of the pages users wait for: thousands of points in a chart view's call, 100 runs'
    # params and metrics in the experiment page's, where MessageToDict's Python walk over every
    # field was a large part of the server's time (88 ms for a page of 100 runs with 200 params).
    plain_messages = frozenset(response for response in (GetMetricHistory.Response, GetMetricHistoryBulkInterval.Response,
                                                          GetRun.Response, SearchRuns.Response)
                               if _only_plain_fields(response.DESCRIPTOR))
    for module in (handlers, auth):  # each imported message_to_json by name
        if module is not None:
            module.message_to_json = _compact(module.message_to_json, plain_messages)


def _install_ping_on_demand(_auth):
    # Every engine of this process (tracking, registry, auth) uses this dialect class.
    from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2

    PGDialect_psycopg2.do_ping = _ping_only_if_spoken_to(PGDialect_psycopg2.do_ping)


def _install_auth_cached_caller(auth):
    auth.store.get_user = _caller_from_the_auth_cache(auth)


def _install_model_link_redaction_skip(auth):
    run_redactions = {auth.redact_get_run_model_links, auth.redact_search_runs_model_links}
    handlers_by_route = auth.AFTER_REQUEST_HANDLERS
    for route in [route for route, handler in handlers_by_route.items() if handler in run_redactions]:
        handlers_by_route[route] = _redact_only_with_model_links(handlers_by_route[route])


# --------------------------------------------------------------------------- the modules beside this one

def _install_run_attribution(_auth):
    import run_attribution
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    run_attribution.install(SqlAlchemyStore)


def _install_readiness_probe(auth):
    import readiness
    from mlflow.server import app

    readiness.install(app, auth)


def _install_short_database_errors(_auth):
    import database_errors
    from mlflow.server import app

    database_errors.install(app)


def _install_ui_defaults(_auth):
    import ui_defaults
    from mlflow.server import app

    ui_defaults.install(app)


def _install_hostile_input(auth):
    import hostile_input
    from mlflow.server import app, constants

    missing = [endpoint for endpoint in hostile_input.ENDPOINTS if endpoint not in app.view_functions]
    if missing:  # a renamed view would leave its route unchecked without a word
        raise PatchNotApplicable(f"MLflow serves no endpoint named {', '.join(missing)}")
    hostile_input.install(app, auth, os.environ[constants.ARTIFACTS_DESTINATION_ENV_VAR])


def _install_tracking_store(_auth):
    import tracking_store
    from mlflow.server import handlers

    if handlers._tracking_store is not None:  # built while loading the app: the builder would not apply
        raise PatchNotApplicable("MLflow built its tracking store before server_patches.apply()")
    handlers._tracking_store_registry.register("postgresql", tracking_store.build)


# --------------------------------------------------------------------------- request_body_reads

# gunicorn's Body.read pulls a request body off its reader 1 KiB at a time (benoitc/gunicorn#2596,
# unfixed in 26.2.0): a 1 GiB checkpoint upload is a million Python-level reads and copies, 5.4 s
# of the worker's CPU, which on a small host is taken from S3 and the client. Body keeps whatever a
# read returns beyond what it asked for, so the two request-body readers are asked for at least
# 64 KiB: 3.5 s per GiB (docs/performance.md, row 4).
REQUEST_BODY_READ_BYTES = 64 * 1024


def _at_least(minimum, read):
    @functools.wraps(read)
    def read_at_least(self, size):
        return read(self, max(size, minimum))

    return read_at_least


def _install_request_body_reads(_auth):
    from gunicorn.http import body

    for reader in (body.LengthReader, body.ChunkedReader):
        reader.read = _at_least(REQUEST_BODY_READ_BYTES, reader.read)


# --------------------------------------------------------------------------- request_header_deadline

# gunicorn 26's gthread worker reads a request's line and headers in a worker thread with no time
# limit: a client that sends a header line now and then (slow-loris) holds that thread as long as it
# likes, and workers x threads such clients (16 by default) stopped the server answering anyone. The
# headers must now be complete within this many seconds, counted for a new connection from its
# accept (so those queued behind slow ones are cut as soon as a thread reaches them) and for a
# kept-alive one from the thread taking it up; else the connection is closed.
REQUEST_HEADER_TIMEOUT_S = float(os.environ.get("GUNICORN_HEADER_TIMEOUT") or 5)


def _on_new_connections(stamp):
    """``stamp(unreader, accepted_at)`` for each new connection's first request: the time limits on
    a connection's first request count from its accept (monotonic seconds), so that clients queued
    behind slow ones are cut as soon as a thread reaches them, instead of each getting a round."""
    from gunicorn.workers import gthread

    accept, start_parsing = gthread.TConn.__init__, gthread.TConn.init

    @functools.wraps(accept)
    def accept_timed(self, *args, **kwargs):
        accept(self, *args, **kwargs)
        self.accepted_at = time.monotonic()

    @functools.wraps(start_parsing)
    def start_parsing_stamped(self):
        new_parser = self.parser is None
        start_parsing(self)
        if new_parser and self.parser is not None:
            stamp(self.parser.unreader, self.accepted_at)

    gthread.TConn.__init__, gthread.TConn.init = accept_timed, start_parsing_stamped


def _receive_by(reader, receive, deadline):
    """``receive(reader)`` (one socket read) by ``deadline`` (monotonic seconds); past it, only what
    has already arrived: a client whose request waited in the queue behind slow ones is not slow
    itself. TimeoutError when nothing came in time."""
    reader.sock.settimeout(max(deadline - time.monotonic(), 0))
    try:
        return receive(reader)
    except BlockingIOError:  # past the deadline, and nothing waiting
        raise TimeoutError from None
    finally:
        with contextlib.suppress(OSError):
            reader.sock.settimeout(None)  # blocking again, as the worker thread expects


def _install_request_header_deadline(_auth):
    from gunicorn.http import errors, parser, unreader

    receive, parse_next_request = unreader.SocketUnreader.chunk, parser.Parser.__next__
    _on_new_connections(lambda reader, accepted_at: setattr(reader, "first_headers_deadline",
                                                            accepted_at + REQUEST_HEADER_TIMEOUT_S))

    @functools.wraps(receive)
    def receive_before_deadline(self):
        deadline = getattr(self, "headers_deadline", None)
        if deadline is None:  # a body: its reads are the application's
            return receive(self)
        try:
            return _receive_by(self, receive, deadline)
        except TimeoutError:
            raise errors.NoMoreData() from None  # what gunicorn raises for a client gone mid-request: closed quietly

    @functools.wraps(parse_next_request)
    def parse_next_request_by_deadline(self):
        first = getattr(self.unreader, "first_headers_deadline", None)
        self.unreader.first_headers_deadline = None
        self.unreader.headers_deadline = first or time.monotonic() + REQUEST_HEADER_TIMEOUT_S
        try:
            return parse_next_request(self)
        finally:
            self.unreader.headers_deadline = None

    unreader.SocketUnreader.chunk = receive_before_deadline
    parser.Parser.__next__ = parse_next_request_by_deadline


# --------------------------------------------------------------------------- request_body_min_rate

# A request's body is read by the application in its worker thread, and gunicorn puts no time limit
# on those reads: a client that declares a body and sends a byte now and then (slow-loris, body
# variant) holds that thread as long as it likes, and workers x threads such clients stopped the
# server answering anyone. A body may now take GUNICORN_BODY_TIMEOUT seconds plus one second for
# every GUNICORN_BODY_MIN_RATE bytes that arrived (mod_reqtimeout's rule), counted like the headers'
# deadline from the connection's accept for its first request, else from the end of its headers:
# any upload that averages the rate goes through, however long and whatever pauses it has
# (a multi-GB checkpoint over a slow link, a network blip mid-upload), a trickle is cut, and bytes
# that wait in the socket are never cut however late the server reads them. A cut body
# reads as the client having gone: the socket is shut, the application sees the body end early
# (a 400 it cannot deliver), an upload to S3 is aborted, and the thread is free.
REQUEST_BODY_TIMEOUT_S = float(os.environ.get("GUNICORN_BODY_TIMEOUT") or 5)
REQUEST_BODY_MIN_RATE = float(os.environ.get("GUNICORN_BODY_MIN_RATE") or 1024)


def _install_request_body_min_rate(_auth):
    from gunicorn.http import parser, unreader

    receive, parse_next_request = unreader.SocketUnreader.chunk, parser.Parser.__next__
    _on_new_connections(lambda reader, accepted_at: setattr(reader, "first_body_clock", accepted_at))

    @functools.wraps(parse_next_request)
    def parse_then_time_the_body(self):
        self.unreader.body_started = None  # headers, or the previous body's leftovers: not timed here
        request = parse_next_request(self)
        first_body_clock, self.unreader.first_body_clock = getattr(self.unreader, "first_body_clock", None), None
        self.unreader.body_started, self.unreader.body_received = first_body_clock or time.monotonic(), 0
        return request

    @functools.wraps(receive)
    def receive_at_the_minimum_rate(self):
        started = getattr(self, "body_started", None)
        if started is None or getattr(self, "headers_deadline", None) is not None:  # headers: their own deadline
            return receive(self)
        try:
            data = _receive_by(self, receive,
                               started + REQUEST_BODY_TIMEOUT_S + self.body_received / REQUEST_BODY_MIN_RATE)
        except TimeoutError:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            return b""
        self.body_received += len(data)
        return data

    parser.Parser.__next__ = parse_then_time_the_body
    unreader.SocketUnreader.chunk = receive_at_the_minimum_rate


# --------------------------------------------------------------------------- the registry

_SQL_STORE = "mlflow.store.tracking.sqlalchemy_store:"
PATCHES = (
    Patch("proxied_artifacts", _install_proxied_artifacts,
          touches=(*(f"mlflow.server.handlers:{check}" for check in _REFUSED_CAPABILITIES),
                   *(f"mlflow.exceptions:{name}" for name in _REFUSED_CAPABILITIES.values()),
                   "mlflow.server.handlers:build_server_info_payload",
                   *(f"mlflow.utils.server_info:{key}" for key in _SERVER_INFO_TRANSFER_KEYS)),
          at_stake="the server advertises multipart transfers and hands clients presigned S3 URLs naming the "
                   "S3 endpoint as the server sees it, which machines outside its network cannot reach "
                   "(downloads hang, then fail)"),
    Patch("run_attribution", _install_run_attribution, needs_auth=True,
          touches=tuple(f"{_SQL_STORE}SqlAlchemyStore.{method}"
                        for method in ("create_run", "set_tag", "delete_tag", "log_batch")),
          at_stake="a run's user is whatever the client claims (the OS user, 'trainer' in every job "
                   "container), so anyone logged in can create runs in a teammate's name"),
    Patch("hostile_input", _install_hostile_input,
          touches=("mlflow.server:app", "mlflow.server.constants:ARTIFACTS_DESTINATION_ENV_VAR",
                   "mlflow.server.security:should_block_cors_request", "mlflow.server.security:get_allowed_origins",
                   *(f"mlflow.server.handlers:{name}" for name in (
                       "catch_mlflow_exception", "_get_request_message", "_get_tracking_store",
                       "_get_model_registry_store")),
                   *(f"{AUTH_MODULE}:{name}" for name in (
                       "sender_is_admin", "_authorize_run_id", "_authorize_logged_model_id"))),
          at_stake="any user can register another user's run folder as a model version and read its files "
                   "with the server's S3 credentials, give an experiment any artifact location (another "
                   "user's folder, the server's file system), and send artifact paths spelled to escape the "
                   "permission check (backslashes, './', '02/'); a deeply nested body is an HTML 500; a page on any "
                   "localhost port reads everything with a visitor's login, while the UI's own writes from a "
                   "team host name are refused"),
    Patch("s3_artifact_repository", _install_s3_artifact_repository,
          touches=("mlflow.store.artifact.artifact_repository_registry:_artifact_repository_registry.register",
                   "mlflow.store.artifact.artifact_repo:StreamUploadMixin",
                   *(f"mlflow.store.artifact.s3_artifact_repo:S3ArtifactRepository.{method}" for method in
                     ("_upload_file", "_download_file", "_get_s3_client", "parse_s3_compliant_uri",
                      "download_artifacts")))),
    Patch("tracking_store", _install_tracking_store,
          touches=("mlflow.server.handlers:_tracking_store_registry.register",
                   "mlflow.server.handlers:_tracking_store",
                   "mlflow.server.handlers:TrackingStoreRegistryWrapper._get_sqlalchemy_store",
                   *(f"{_SQL_STORE}{name}" for name in (
                       "_get_orderby_clauses", "_get_sqlalchemy_filter_clauses", "_parse_experiment_ids",
                       "SqlAlchemyStore._search_runs", "SqlAlchemyStore._log_metrics",
                       "SqlAlchemyStore._log_metrics_once", "SqlAlchemyStore._filter_experiment_ids",
                       "SqlAlchemyStore._validate_max_results_param", "SqlAlchemyStore._check_run_is_active",
                       "SqlAlchemyStore._get_run", "SqlAlchemyStore.sanitize_metric_value",
                       "SqlAlchemyStore.get_metric_history_bulk_interval")),
                   "mlflow.utils.mlflow_tags:_get_run_name_from_tags",
                   *(f"mlflow.utils.validation:{name}" for name in (
                       "_validate_batch_log_data", "_validate_batch_log_limits", "_validate_metric",
                       "_validate_run_id")))),
    Patch("auth_cached_caller", _install_auth_cached_caller, needs_auth=True,
          touches=tuple(f"{AUTH_MODULE}:{name}" for name in (
              "store.get_user", "_USER_AUTH_CACHE", "_USER_AUTH_CACHE_LOCK", "_auth_cache_key"))),
    Patch("model_link_redaction_skip", _install_model_link_redaction_skip, needs_auth=True,
          touches=tuple(f"{AUTH_MODULE}:{name}" for name in (
              "AFTER_REQUEST_HANDLERS", "redact_get_run_model_links", "redact_search_runs_model_links"))),
    Patch("compact_json", _install_compact_json,
          touches=("mlflow.server.handlers:message_to_json", f"{AUTH_MODULE}:message_to_json",
                   *(f"mlflow.protos.service_pb2:{name}" for name in (
                       "GetMetricHistory", "GetMetricHistoryBulkInterval", "GetRun", "SearchRuns")))),
    Patch("ping_on_demand", _install_ping_on_demand, verified={"sqlalchemy": ("2.1.9",)},
          touches=("sqlalchemy.dialects.postgresql.psycopg2:PGDialect_psycopg2.do_ping",)),
    Patch("readiness_probe", _install_readiness_probe,
          touches=("mlflow.server:app", "mlflow.server:_add_static_prefix",
                   f"{AUTH_MODULE}:_UNPROTECTED_PATH_PREFIXES", f"{AUTH_MODULE}:auth_config.database_uri")),
    Patch("short_database_errors", _install_short_database_errors,
          touches=("mlflow.server:app", "mlflow.store.db.utils:_logger", "mlflow.server.handlers:_logger")),
    # The local-storage keys it seeds are read from MLflow's UI bundle (ui_defaults.py).
    Patch("ui_defaults", _install_ui_defaults,
          touches=("mlflow.server:app", "mlflow.telemetry.utils:is_telemetry_disabled")),
    Patch("request_body_reads", _install_request_body_reads, verified={"gunicorn": ("26.2.0",)}, stage="gunicorn",
          touches=("gunicorn.http.body:LengthReader.read", "gunicorn.http.body:ChunkedReader.read")),
    Patch("request_header_deadline", _install_request_header_deadline, verified={"gunicorn": ("26.2.0",)},
          stage="gunicorn", touches=("gunicorn.workers.gthread:TConn.__init__", "gunicorn.workers.gthread:TConn.init",
                                     "gunicorn.http.unreader:SocketUnreader.chunk",
                                     "gunicorn.http.parser:Parser.__next__", "gunicorn.http.errors:NoMoreData")),
    Patch("request_body_min_rate", _install_request_body_min_rate, verified={"gunicorn": ("26.2.0",)},
          stage="gunicorn", touches=("gunicorn.workers.gthread:TConn.__init__", "gunicorn.workers.gthread:TConn.init",
                                     "gunicorn.http.unreader:SocketUnreader.chunk", "gunicorn.http.parser:Parser.__next__")),
)
PATCHES_BY_NAME = {patch.name: patch for patch in PATCHES}
