"""The public API routes, each answering with and without the trailing slash."""

from django.urls import path

from . import views


def with_and_without_slash(route: str, view, name: str) -> list:
    """The slashed route is canonical (what `reverse` gives); the bare one is an alias, not a redirect,
    because a redirect would turn a client's POST into a GET."""
    return [path(route, view, name=name), path(route.rstrip("/"), view)]


urlpatterns = [
    *with_and_without_slash("start-recording/", views.StartRecordingView.as_view(), "start-recording"),
    *with_and_without_slash("receive-video-chunk/", views.ReceiveChunkView.as_view(), "receive-video-chunk"),
    *with_and_without_slash("finalize-recording/", views.FinalizeRecordingView.as_view(), "finalize-recording"),
    # The session id in the path, as some clients of this protocol send it (README "Compatibility").
    *with_and_without_slash(
        "receive-video-chunk/<str:session_id>/", views.ReceiveChunkView.as_view(), "receive-video-chunk-for"
    ),
    *with_and_without_slash(
        "finalize-recording/<str:session_id>/", views.FinalizeRecordingView.as_view(), "finalize-recording-for"
    ),
    *with_and_without_slash("get-recorded-data/<str:session_id>/", views.RecordingView.as_view(), "get-recorded-data"),
    *with_and_without_slash("recordings/<str:session_id>/", views.RecordingResourceView.as_view(), "recording"),
    *with_and_without_slash(
        "recordings/<str:session_id>/<str:kind>/", views.RecordingMediaView.as_view(), "recording-media"
    ),
]
