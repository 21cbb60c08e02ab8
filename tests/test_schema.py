"""The published API description: valid OpenAPI 2, complete, usable from Swagger UI."""

import pytest
import yaml
from openapi_spec_validator import validate

pytestmark = pytest.mark.django_db

ENDPOINTS = {
    "/start-recording/": "post",
    "/receive-video-chunk/": "post",
    "/finalize-recording/": "post",
    "/get-recorded-data/{session_id}/": "get",
    "/recordings/{session_id}/": "delete",
    "/recordings/{session_id}/{kind}/": "get",
}


@pytest.fixture
def schema(api) -> dict:
    response = api.get("/swagger.json")
    assert response.status_code == 200
    return response.json()


def test_schema_validates(schema):
    validate(schema)


def test_schema_lists_every_endpoint_once(schema):
    assert schema["basePath"] == "/api"
    assert {
        path: next(iter(set(operations) - {"parameters"})) for path, operations in schema["paths"].items()
    } == ENDPOINTS


def test_chunk_upload_is_a_multipart_form_with_a_file_field(schema):
    for path in ("/receive-video-chunk/", "/finalize-recording/"):
        operation = schema["paths"][path]["post"]
        assert operation["consumes"][0] == "multipart/form-data"
        file_fields = [parameter for parameter in operation["parameters"] if parameter.get("type") == "file"]
        assert [field["name"] for field in file_fields] == ["video_chunk"]
        assert operation["security"] == [{"UploadToken": []}]
        labels = {sample["label"] for sample in operation["x-codeSamples"]}
        assert {"multipart", "JSON + base64", "raw body"} <= labels


def test_bearer_token_is_a_security_definition(schema):
    definition = schema["securityDefinitions"]["UploadToken"]
    assert (definition["type"], definition["in"], definition["name"]) == ("apiKey", "header", "Authorization")


def test_error_responses_are_documented_with_codes(schema):
    responses = schema["paths"]["/receive-video-chunk/"]["post"]["responses"]
    assert {"201", "200", "400", "401", "403", "404", "409", "413", "415"} <= set(responses)
    assert responses["409"]["examples"]["application/json"]["code"] == "chunk_conflict"
    assert schema["definitions"]["ErrorOutput"]["required"] == ["code", "detail"]


def test_yaml_schema_and_ui_pages_are_served(api):
    assert yaml.safe_load(api.get("/swagger.yaml").content)["swagger"] == "2.0"
    for url in ("/swagger/", "/swagger", "/redoc/"):
        response = api.get(url)
        assert response.status_code == 200
        assert b"<html" in response.content.lower()
