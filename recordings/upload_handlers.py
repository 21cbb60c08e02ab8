"""A multipart upload handler that hashes, measures and keeps the head of a file while Django spools it."""

from django.core.files.uploadhandler import TemporaryFileUploadHandler

from .chunks import ChunkDigest


class HashingTemporaryFileUploadHandler(TemporaryFileUploadHandler):
    """Spools to a temporary file like Django's own handler, and computes the SHA-256 on the way in,
    so a stored chunk is never read back just to hash it. Larger blocks than Django's 64 KiB
    default mean fewer trips through the multipart parser."""

    chunk_size = 1024 * 1024

    def new_file(self, *args, **kwargs) -> None:
        super().new_file(*args, **kwargs)
        self._digest = ChunkDigest()

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        self._digest.update(raw_data)
        try:
            return super().receive_data_chunk(raw_data, start)
        except OSError:  # a full disk: delete the partial spool file now, not whenever it is collected
            self.file.close()
            raise

    def file_complete(self, file_size: int):
        uploaded = super().file_complete(file_size)
        if uploaded is not None:
            uploaded.sha256 = self._digest.sha256  # type: ignore[attr-defined]  # read by chunks.stage_upload
            uploaded.head = self._digest.head  # type: ignore[attr-defined]
        return uploaded
