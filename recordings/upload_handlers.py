"""A multipart upload handler that hashes, measures and keeps the head of a file while Django spools it."""

import hashlib

from django.core.files.uploadhandler import TemporaryFileUploadHandler

SNIFF_BYTES = 64


class HashingTemporaryFileUploadHandler(TemporaryFileUploadHandler):
    """Spools to a temporary file like Django's own handler, and computes the SHA-256 on the way in,
    so a stored chunk is never read back just to hash it. Larger blocks than Django's 64 KiB
    default mean fewer trips through the multipart parser."""

    chunk_size = 1024 * 1024

    def new_file(self, *args, **kwargs) -> None:
        super().new_file(*args, **kwargs)
        self._digest = hashlib.sha256()
        self._head = b""

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        self._digest.update(raw_data)
        if len(self._head) < SNIFF_BYTES:
            self._head += raw_data[: SNIFF_BYTES - len(self._head)]
        try:
            return super().receive_data_chunk(raw_data, start)
        except OSError:  # a full disk: delete the partial spool file now, not whenever it is collected
            self.file.close()
            raise

    def file_complete(self, file_size: int):
        uploaded = super().file_complete(file_size)
        uploaded.sha256 = self._digest.hexdigest()
        uploaded.head = self._head
        return uploaded
