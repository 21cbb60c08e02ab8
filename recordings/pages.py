"""The HTML pages: the recorder (`/`) and a recording's watch page (`/r/<session_id>/`).

Thin like the API views: the pages are shells that their scripts fill from the JSON API, so the API
stays the one source of what a recording is.
"""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_safe

from . import services
from .errors import RecorderError


@require_safe
def recorder_page(request: HttpRequest) -> HttpResponse:
    return render(request, "recordings/recorder.html")


@require_safe
def watch_page(request: HttpRequest, session_id: str) -> HttpResponse:
    try:
        session = services.get_session(session_id=session_id)
    except RecorderError as error:
        return render(request, "recordings/not_found.html", {"detail": error.detail}, status=error.status)
    context = {
        "session_id": session.id,
        "title": session.title,
        "status_url": reverse("get-recorded-data", kwargs={"session_id": session.id}),
    }
    return render(request, "recordings/watch.html", context)
