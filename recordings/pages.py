"""The HTML pages: the recorder (`/`) and a recording's watch page (`/r/<session_id>/`).

Thin like the API views: the pages are shells that their scripts fill from the JSON API, so the API
stays the one source of what a recording is.
"""

from functools import wraps

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_safe

from . import services
from .errors import RecorderError


def with_content_security_policy(view):
    @wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        response = view(request, *args, **kwargs)
        response["Content-Security-Policy"] = settings.RECORDER_PAGE_CSP
        return response

    return wrapped


def _common() -> dict:
    return {"api_docs": settings.RECORDER_API_DOCS}


@require_safe
@with_content_security_policy
def recorder_page(request: HttpRequest) -> HttpResponse:
    return render(request, "recordings/recorder.html", _common())


@require_safe
@with_content_security_policy
def watch_page(request: HttpRequest, session_id: str) -> HttpResponse:
    """By view id (the links this service gives) or, for links shared before view ids, session id.
    The page names the view id only: viewers never learn the session id."""
    try:
        session = services.get_readable(recording_id=session_id).session
    except RecorderError as error:
        return render(request, "recordings/not_found.html", {**_common(), "detail": error.detail}, status=error.status)
    context = {
        **_common(),
        "view_id": session.view_id,
        "title": session.title,
        "status_url": reverse("get-recorded-data", kwargs={"session_id": session.view_id}),
    }
    return render(request, "recordings/watch.html", context)
