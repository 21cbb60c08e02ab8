"""A test client speaking the API the way browser clients do, over each of the three transports."""

import base64
import json
from dataclasses import dataclass
from urllib.parse import urlencode

from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

TRANSPORTS = ("multipart", "json", "raw")


@dataclass
class Started:
    session_id: str
    upload_token: str
    body: dict


def start(api: APIClient, **fields) -> Started:
    response = api.post("/api/start-recording/", fields, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    return Started(session_id=body["session_id"], upload_token=body["upload_token"], body=body)


def post_chunk(
    api: APIClient,
    started: Started,
    chunk: bytes | None,
    *,
    index: int | None,
    transport: str = "multipart",
    url: str = "/api/receive-video-chunk/",
    token: str | None = "default",
    extra: dict | None = None,
    file_field: str = "video_chunk",
    headers: dict | None = None,
):
    """POST one chunk (or none) with the given transport; returns the response."""
    token = started.upload_token if token == "default" else token
    request_headers = dict(headers or {})
    if token is not None:
        request_headers["Authorization"] = f"Bearer {token}"
    fields = {"session_id": started.session_id, **({"chunk_index": index} if index is not None else {})}
    fields.update(extra or {})
    fields = {key: value for key, value in fields.items() if value is not None}  # None: leave the field out
    if transport == "multipart":
        if chunk is not None:
            fields[file_field] = SimpleUploadedFile("blob", chunk, content_type="video/webm")
        return api.post(url, fields, format="multipart", headers=request_headers)
    if transport == "json":
        if chunk is not None:
            fields["video_chunk"] = base64.b64encode(chunk).decode("ascii")
        return api.generic("POST", url, json.dumps(fields), content_type="application/json", headers=request_headers)
    if transport == "raw":
        query = urlencode(
            {key: str(value).lower() if isinstance(value, bool) else value for key, value in fields.items()}
        )
        return api.generic(
            "POST", f"{url}?{query}", chunk or b"", content_type="application/octet-stream", headers=request_headers
        )
    raise ValueError(transport)


def finalize(
    api: APIClient,
    started: Started,
    *,
    transport: str = "multipart",
    chunk: bytes | None = None,
    index: int | None = None,
    url: str = "/api/finalize-recording/",
    token: str | None = "default",
    **extra,
):
    return post_chunk(
        api,
        started,
        chunk,
        index=index,
        transport=transport,
        url=url,
        token=token,
        extra={"is_final": "true", **extra},
    )


def upload_all(
    api: APIClient,
    started: Started,
    chunks: list[bytes],
    *,
    transport: str = "multipart",
    order: list[int] | None = None,
) -> None:
    for index in order if order is not None else range(len(chunks)):
        response = post_chunk(api, started, chunks[index], index=index, transport=transport)
        assert response.status_code in (200, 201), (index, response.content)


def status_of(api: APIClient, session_id: str) -> dict:
    response = api.get(f"/api/get-recorded-data/{session_id}/")
    assert response.status_code == 200, response.content
    return response.json()


def download(api: APIClient, url: str, **headers) -> bytes:
    response = api.get(url, headers=headers)
    assert response.status_code == 200, response.status_code
    return b"".join(response.streaming_content)
