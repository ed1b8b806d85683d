"""What a client and the server log get when the database fails a request.

MLflow answers a SQLAlchemy ``OperationalError`` (PostgreSQL stopped, a session terminated in the
middle of a query, a failover) with ``TEMPORARILY_UNAVAILABLE``, HTTP 503: the right answer, which
clients retry. But its message is the whole exception: the SQL statement with its parameters (the
run and experiment ids the query named) and, when the database cannot be reached, its host and
port. And for each such request the log gets MLflow's store traceback (two chained exceptions with
the SQL, 40-60 lines) and the handler's line repeating the multi-line message: 8 UI calls that met
terminated sessions wrote 18 tracebacks, 800 lines, in 12 s (tests/chaos, docs/reliability.md).

So a 503 for a database error says only that the database is unavailable (its other fields, such
as ``sqlstate``, stay), and each failure is one line in the log naming the call and the database's
own first line of the error ("server closed the connection unexpectedly", "connection to server
… failed: Connection refused"). With ``MLFLOW_LOGGING_LEVEL=DEBUG`` the tracebacks stay.
"""

from __future__ import annotations

import json
import logging

CLIENT_MESSAGE = "The database is temporarily unavailable; retry later."
# How the messages of SQLAlchemy's database errors begin, e.g. "(psycopg2.OperationalError) …".
_DATABASE_ERROR_PREFIXES = ("(psycopg2.", "(psycopg.", "(sqlalchemy.")
STORE_LOGGER = "mlflow.store.db.utils"
HANDLERS_LOGGER = "mlflow.server.handlers"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _names_a_database_error(message) -> bool:
    return isinstance(message, str) and message.startswith(_DATABASE_ERROR_PREFIXES)


def short_answer(response):
    """``after_request``: a database error's 503 keeps its fields but not the SQL, ids or host."""
    if response.status_code != 503 or response.is_streamed or response.mimetype != "application/json":
        return response
    try:
        body = json.loads(response.get_data())
    except ValueError:
        return response
    if isinstance(body, dict) and _names_a_database_error(body.get("message")):
        response.set_data(json.dumps({**body, "message": CLIENT_MESSAGE}))
    return response


class OneLinePerFailure(logging.Filter):
    """Turns MLflow's traceback of a database error into one line, and the handler's into its first."""

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return True
        error = record.exc_info[1] if record.exc_info else None
        if record.name == STORE_LOGGER and error is not None and _names_a_database_error(str(error)):
            record.msg, record.args = "database error, the request is answered 503: %s", (_first_line(str(error)),)
            record.exc_info = record.exc_text = None
        elif record.name == HANDLERS_LOGGER and _names_a_database_error(str(record.msg).partition(": ")[2]):
            record.msg, record.args = _first_line(record.getMessage()), ()
        return True


def install(app) -> None:
    app.after_request(short_answer)
    for name in (STORE_LOGGER, HANDLERS_LOGGER):
        logging.getLogger(name).addFilter(OneLinePerFailure())
