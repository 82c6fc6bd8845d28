"""The API describes itself: every operation's success answer has a schema (a named model, a
list of one, or a stream's declared content), its error answers are documented, and the bearer
key is a security scheme."""

from __future__ import annotations

from typing import Any

import pytest

from oddish.api.app import create_app


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return create_app().openapi()


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    ]


def named(schema: dict[str, Any], spec: dict[str, Any]) -> bool:
    """A schema that says what is in it: a model of the components (an object of declared
    properties or an alias of one), an array of such, or one of several such."""
    if "$ref" in schema:
        component = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        return (
            bool(component.get("properties"))
            or any(named(part, spec) for part in component.get("anyOf", []))
            or component.get("type") == "object"
        )
    if schema.get("type") == "array":
        return named(schema["items"], spec)
    if "anyOf" in schema:
        return all(named(part, spec) for part in schema["anyOf"])
    # A stream: bytes, or a JSON document named by its title (Harbor's, as written).
    return schema.get("format") == "binary" or bool(schema.get("title") and schema.get("type"))


def test_every_operation_answers_with_a_schema(spec: dict[str, Any]) -> None:
    untyped = []
    for method, path, operation in operations(spec):
        successes = {c: r for c, r in operation["responses"].items() if c.startswith("2")}
        assert successes, f"{method} {path} documents no success"
        for code, response in successes.items():
            contents = response.get("content") or {}
            # Pages (text/html) are documents, not data: their schema is a string.
            if not contents or not all(
                kind == "text/html" or ("schema" in c and named(c["schema"], spec))
                for kind, c in contents.items()
            ):
                untyped.append(f"{method} {path} {code}")
    assert untyped == [], f"operations without a response schema: {untyped}"


def test_every_model_field_is_declared_and_examples_are_given(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    for name in ("TaskSummary", "Trial", "SweepCreated", "Uploaded"):
        assert schemas[name].get("examples"), name
    # Components with no declared property are only the open JSON documents served as written.
    empty = {
        name
        for name, schema in schemas.items()
        if schema.get("type") == "object" and not schema.get("properties")
    }
    assert empty <= {"HarborTrialResult"}, empty


def test_error_answers_are_documented(spec: dict[str, Any]) -> None:
    for method, path, operation in operations(spec):
        codes = set(operation["responses"])
        if path in ("/health", "/openapi.json"):
            continue
        assert {"404", "422", "503"} <= codes or path in ("/limits", "/experiments"), (
            method,
            path,
            codes,
        )
        if method in ("POST", "PUT", "PATCH") and operation.get("requestBody"):
            assert "413" in codes and "422" in codes, (method, path)
    for path in (
        "/tasks/{task_id}/retry",
        "/trials/{trial_id}/retry",
        "/experiments/{experiment_id}/retry",
        "/trials/{trial_id}",
    ):
        for method, operation in spec["paths"][path].items():
            if method in ("post", "delete"):
                assert "409" in operation["responses"], (method, path)


def test_the_bearer_key_is_a_security_scheme(spec: dict[str, Any]) -> None:
    scheme = spec["components"]["securitySchemes"]["bearerKey"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    assert spec["security"] == [{"bearerKey": []}]
    assert spec["paths"]["/health"]["get"]["security"] == []
    assert "security" not in spec["paths"]["/tasks"]["get"]
