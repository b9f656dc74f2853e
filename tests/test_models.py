"""Job validation: every bad field is named, camelCase is accepted, nothing unsafe gets through."""

from __future__ import annotations

import pytest

from codeworker.models import InvalidJob, Job, OperationType, for_every_type, parse_job

ALLOWED = ["https://github.com/"]


def job(**overrides: object) -> dict:
    base = {
        "description": "Fix the crash",
        "repository": {
            "url": "https://github.com/acme/shop.git",
            "owner": "acme",
            "name": "shop",
            "branch": "main",
        },
    }
    base.update(overrides)
    return base


def parse(raw: object, operation_type: str = "error_fix") -> Job:
    return parse_job(raw, operation_type=operation_type, allowed_repos=ALLOWED, max_iterations_cap=10)


def errors(raw: object, operation_type: str = "error_fix") -> dict[str, str]:
    with pytest.raises(InvalidJob) as info:
        parse(raw, operation_type)
    return info.value.fields


def test_minimal_job_gets_defaults_and_an_operation_id():
    parsed = parse(job())
    assert parsed.operation_type == "error_fix"
    assert parsed.approval_required is True
    assert len(parsed.operation_id) == 32
    assert parsed.repository.owner == "acme"


def test_camel_case_fields_are_accepted():
    parsed = parse(
        {
            "operationType": "feature_implementation",
            "description": "Add search",
            "repository": {"url": "https://github.com/acme/shop"},
            "targetFiles": ["src/app.py"],
            "featureContext": {"acceptanceCriteria": ["search returns hits"], "testStrategy": "pytest"},
            "approvalRequired": False,
            "maxIterations": 3,
            "operationId": "op-1",
            "testCommand": "pytest -q",
            "organizationId": "org",
            "sessionId": "s",
        },
        "feature_implementation",
    )
    assert parsed.target_files == ["src/app.py"]
    assert parsed.feature_context is not None and parsed.feature_context.test_strategy == "pytest"
    assert (parsed.approval_required, parsed.max_iterations, parsed.operation_id) == (False, 3, "op-1")
    assert parsed.repository.name == "shop"


def test_every_bad_field_is_named_at_once():
    fields = errors(
        {
            "description": "",
            "repository": {"url": "https://evil.example/acme/shop"},
            "target_files": ["../etc/passwd"],
            "max_iterations": 0,
        }
    )
    assert set(fields) == {"description", "repository.url", "target_files", "max_iterations"}
    assert "allowed prefix" in fields["repository.url"]


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ("not a dict", "job", "JSON object"),
        (["list"], "job", "JSON object"),
        (job(description=None), "description", "string"),
        (job(description="x" * 100_001), "description", "at most"),
        ({"description": "d"}, "repository", "required"),
        (job(repository="https://github.com/a/b"), "repository", "valid dictionary"),
        (job(repository={"url": "file:///etc"}), "repository.url", "scheme"),
        (job(repository={"url": "ssh://git@github.com/a/b"}), "repository.url", "scheme"),
        (job(repository={"url": "git@github.com:a/b.git"}), "repository.url", "scheme"),
        (job(repository={"url": "https://tok:x@github.com/a/b"}), "repository.url", "credentials"),
        (job(repository={"url": "https://github.com.evil.io/a/b"}), "repository.url", "allowed prefix"),
        (job(repository={"url": "https://github.com/onlyowner"}), "repository.url", "owner and a repository"),
        (job(repository={"url": "https://github.com/a/b?x=1"}), "repository.url", "query"),
        (job(repository={"url": "https://github.com/a/b", "owner": "c"}), "repository", "does not match"),
        (job(repository={"url": "https://github.com/a/b", "branch": "../x"}), "repository.branch", "branch"),
        (job(repository={"url": "https://github.com/a/b", "branch": "a b"}), "repository.branch", "branch"),
        (job(target_files=["/etc/passwd"]), "target_files", "relative"),
        (job(target_files=["a/../../b"]), "target_files", "'..'"),
        (job(target_files=[".git/hooks/pre-commit"]), "target_files", ".git"),
        (job(target_files=["a\x00b"]), "target_files", "repo-relative"),
        (job(target_files="src/app.py"), "target_files", "valid list"),
        (job(target_files=[1]), "target_files.0", "string"),
        (job(max_iterations=-1), "max_iterations", "between 1 and 10"),
        (job(max_iterations=10**9), "max_iterations", "between 1 and 10"),
        (job(max_iterations="many"), "max_iterations", "integer"),
        (job(approval_required="perhaps"), "approval_required", "boolean"),
        (job(operation_id="../../x"), "operation_id", "letters"),
        (job(operation_id="x" * 200), "operation_id", "letters"),
        (job(operation_id=""), "operation_id", "letters"),
        (job(operation_type="deploy"), "operation_type", "was sent to"),
        (job(test_command="   "), "test_command", "non-empty"),
        (job(error_context={"affected_files": ["../x"]}), "error_context.affected_files", "'..'"),
        (job(error_context="boom"), "error_context", "valid dictionary"),
        (job(approval_required="no"), "approval_required", "boolean"),
        (job(max_iterations=True), "max_iterations", "integer"),
        (job(max_iterations="3"), "max_iterations", "integer"),
        (job(target_files=["src/\u202egnp.py"]), "target_files", "invisible"),
        (job(target_files=["a\u200b.py"]), "target_files", "invisible"),
        (job(repository={"url": "https://github.com/a/b\nHost: x"}), "repository.url", "whitespace"),
        (job(repository={"url": "https://github.com/a/../../b/c"}), "repository.url", "without '..'"),
        (job(repository={"url": "https://github.com/a/%2e%2e/b"}), "repository.url", "only letters"),
        (job(repository={"url": "https://github.com:8443/a/b"}), "repository.url", "allowed prefix"),
        (job(repository={"url": "https://github.com/" + "a" * 3000}), "repository.url", "at most 2048"),
    ],
)
def test_invalid_jobs_name_the_field(raw, field, words):
    fields = errors(raw)
    assert field in fields, fields
    assert words in fields[field]


def test_unknown_operation_type_on_its_own_task_is_named():
    assert "operation_type" in errors(job(operation_type="deploy"), "deploy")


def test_target_files_are_normalised_and_deduplicated():
    assert parse(job(target_files=["./b.py", "a.py", "b.py"])).target_files == ["a.py", "b.py"]


def test_the_allowlist_compares_hosts_and_whole_segments():
    allowed = ["https://ghe.example.com/team"]
    ok = parse_job(
        job(repository={"url": "https://GHE.example.com/team/shop.git"}),
        operation_type="error_fix",
        allowed_repos=allowed,
        max_iterations_cap=10,
    )
    assert ok.repository.name == "shop"
    for url in ("https://ghe.example.com/teamx/shop", "https://ghe.example.com.evil.io/team/shop"):
        with pytest.raises(InvalidJob, match="allowed prefix"):
            parse_job(
                job(repository={"url": url}),
                operation_type="error_fix",
                allowed_repos=allowed,
                max_iterations_cap=10,
            )


def test_errors_do_not_echo_a_huge_value():
    fields = errors(
        job(
            target_files=["\u202e" + "x" * 900],
            repository={"url": "https://github.com/a/b", "branch": "b" * 5000},
        )
    )
    assert all(len(message) < 300 for message in fields.values()), fields


def test_every_operation_type_has_its_task_on_the_queue() -> None:
    from codeworker.celery import app

    app.loader.import_default_modules()
    for kind in OperationType:
        assert app.tasks[kind.task_name].name == f"codeworker.{kind.value}"
        assert OperationType.of_task(kind.task_name) is kind
    assert OperationType.of_task("codeworker.health_probe") is None


def test_a_table_that_misses_an_operation_type_is_refused_at_import() -> None:
    table = {kind: kind.value for kind in OperationType if kind is not OperationType.REFACTOR}
    with pytest.raises(TypeError, match="the example table has no entry for refactor"):
        for_every_type(table, "the example table")
