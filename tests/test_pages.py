"""The HTML pages over HTTP: what they serve before any script runs."""

import uuid

import pytest

from tests.recorder_client import start

pytestmark = pytest.mark.django_db


def test_the_recorder_page_loads_its_module_and_styles(client):
    response = client.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert '<script type="module" src="/static/recordings/recorder.js">' in html
    assert 'href="/static/recordings/style.css"' in html
    assert 'aria-live="polite"' in html


@pytest.mark.parametrize("opened_by", ["view_id", "session_id"])
def test_the_watch_page_names_the_recording_and_its_status_url_by_view_id_only(api, client, opened_by):
    started = start(api, title="Quarterly <demo>")
    view_id = started.body["view_id"]
    assert started.body["watch_url"] == f"http://testserver/r/{view_id}/"
    response = client.get(f"/r/{started.body[opened_by]}/")  # links shared before view ids still work
    assert response.status_code == 200
    html = response.content.decode()
    assert "Quarterly &lt;demo&gt;" in html  # escaped, never raw
    assert f'data-status-url="/api/get-recorded-data/{view_id}/"' in html
    assert started.session_id not in html  # a viewer never learns the write id
    assert client.get(f"/r/{started.body[opened_by]}").status_code == 200


@pytest.mark.parametrize("session_id", [str(uuid.uuid4()), "not-a-uuid", "%2e%2e"])
def test_an_unknown_recording_gets_an_html_404(client, session_id):
    response = client.get(f"/r/{session_id}/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
    assert "No such recording" in response.content.decode()


def test_pages_only_answer_reads(client):
    assert client.post("/").status_code == 405
