"""Root routes: the recorder and watch pages, the API, its schema and docs, and the admin."""

from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from drf_yasg.views import get_schema_view
from rest_framework.permissions import AllowAny

from recordings import pages

schema_view = get_schema_view(public=True, permission_classes=[AllowAny])

urlpatterns = [
    path("", pages.recorder_page, name="recorder"),
    path("r/<str:session_id>/", pages.watch_page, name="watch"),  # a view id, or an older link's session id
    path("r/<str:session_id>", pages.watch_page),
    path("api/", include("recordings.urls")),
]
if settings.RECORDER_API_DOCS:
    urlpatterns += [
        re_path(r"^swagger\.(?P<format>json|yaml)$", schema_view.without_ui(cache_timeout=0), name="schema-json"),
        re_path(r"^swagger/?$", schema_view.with_ui("swagger", cache_timeout=0), name="schema-swagger-ui"),
        re_path(r"^redoc/?$", schema_view.with_ui("redoc", cache_timeout=0), name="schema-redoc"),
    ]
if settings.DJANGO_ADMIN:
    urlpatterns += [path("admin/", admin.site.urls)]

handler400 = "recordings.errors.bad_request_view"
handler404 = "recordings.errors.not_found_view"
handler500 = "recordings.errors.server_error_view"
