"""The table infra/check-mlflow-upgrade.sh prints: per server patch, verified or not, what broke.

    mlflow_upgrade_table.py --test-files          the test files to run (one pytest session)
    mlflow_upgrade_table.py PATCHES.tsv JUNIT.xml the table (server_setup.py patch-report + pytest's report)
"""

import sys
import xml.etree.ElementTree as ElementTree

# Each patch's own tests: (test file, words its test names contain; empty: the whole file).
# test_server_tracking_store.py is the replay-equivalence test of tracking_store.
PATCH_TESTS = {
    "proxied_artifacts": [("test_server_artifacts", ("presigned", "server_info"))],
    "run_attribution": [("test_server_run_attribution", ())],
    "hostile_input": [("test_server_hostile_input", ())],
    "s3_artifact_repository": [("test_server_artifact_not_found", ()),
                               ("test_server_artifacts", ("proxied_upload", "round_trips")),
                               ("test_server_hostile_input", ("goes_away_midway",))],
    "tracking_store": [("test_server_tracking_store", ())],
    "auth_cached_caller": [("test_server_auth", ("admin", "logged_in", "password"))],
    "model_link_redaction_skip": [("test_server_auth", ("links_to_logged_models",))],
    "compact_json": [("test_server_responses", ())],
    "ping_on_demand": [("test_server_resilience", ())],
    "readiness_probe": [("test_server_readiness", ())],
    "short_database_errors": [("test_server_readiness", ("follows_postgres",))],
    "ui_defaults": [("test_server_ui_defaults", ())],
    "request_body_reads": [("test_server_artifacts", ("proxied_upload", "round_trips"))],
    "request_header_deadline": [("test_server_hostile_input", ("slow_clients",))],
    "request_body_min_rate": [("test_server_hostile_input", ("slow_bodies", "pauses_longer"))],
}


COLLECTION = "(import of the test file)"


def test_files() -> list[str]:
    return sorted({f"tests/integration/{module}.py" for tests in PATCH_TESTS.values() for module, _ in tests})


def outcomes(junit_path: str) -> dict[tuple[str, str], str]:
    """(module, test name) -> "passed" | "failed" | "skipped"."""
    results = {}
    for case in ElementTree.parse(junit_path).iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        if not module:  # a file that failed to import: pytest names the file, not a test
            module, case.attrib["name"] = case.get("name", "").rsplit(".", 1)[-1], COLLECTION
        if case.find("failure") is not None or case.find("error") is not None:
            results[(module, case.get("name"))] = "failed"
        else:
            results[(module, case.get("name"))] = "skipped" if case.find("skipped") is not None else "passed"
    return results


def own_tests(patch: str, results: dict) -> dict:
    return {key: outcome for key, outcome in results.items()
            for module, words in PATCH_TESTS[patch]
            if key[0] == module and (not words or key[1] == COLLECTION or any(word in key[1] for word in words))}


def table(patches_tsv: str, junit_path: str) -> str:
    results = outcomes(junit_path)
    rows = [("patch", "kind", "verified", "names missing", "own tests", "what broke")]
    for line in open(patches_tsv, encoding="utf-8").read().splitlines():
        name, kind, verdict, missing = line.split("\t")
        tests = own_tests(name, results)
        failed = sorted(test for (_, test), outcome in tests.items() if outcome == "failed")
        passed = sum(outcome == "passed" for outcome in tests.values())
        rows.append((name, kind, verdict, missing, f"{passed}/{len(tests)} passed",
                     ", ".join(failed) or ("-" if tests else "no tests ran")))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(" | ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


if __name__ == "__main__":
    if sys.argv[1:] == ["--test-files"]:
        print(" ".join(test_files()))
    elif len(sys.argv) == 3:
        print(table(*sys.argv[1:]))
    else:
        sys.exit(__doc__)
