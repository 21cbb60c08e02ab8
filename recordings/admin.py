from django.contrib import admin

from .models import Chunk, RecordingSession


@admin.register(RecordingSession)
class RecordingSessionAdmin(admin.ModelAdmin):
    list_display = ("id", "title", "status", "container", "duration_seconds", "created_at", "ready_at")
    list_filter = ("status", "container")
    search_fields = ("id", "title")
    readonly_fields = ("upload_token_hash",)


@admin.register(Chunk)
class ChunkAdmin(admin.ModelAdmin):
    list_display = ("session", "index", "size", "sha256", "received_at")
    search_fields = ("session__id",)
