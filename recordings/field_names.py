"""What other clients of this protocol call our fields (README "Compatibility"): each is read as the
field it stands for, and two names of one field that disagree are refused (uploads.py)."""

FIELD_ALIASES = {
    "session_id": ("video_id", "videoId", "sessionId"),
    "chunk_index": ("blob_index", "chunkIndex"),
    "is_final": ("is_last", "isFinal", "isLast"),
    "total_chunks": ("totalChunks",),
}
