"""System checks: settings that would only fail at the first recording are reported at start."""

from django.conf import settings
from django.core.checks import Error, register

from . import utils


@register()
def check_recorder_settings(app_configs, **kwargs) -> list[Error]:
    errors = []
    if settings.RECORDER_AUDIO_FORMAT not in utils.AUDIO_FORMATS:
        errors.append(
            Error(
                f"RECORDER_AUDIO_FORMAT={settings.RECORDER_AUDIO_FORMAT!r} is not one of "
                f"{sorted(utils.AUDIO_FORMATS)}.",
                id="recordings.E001",
            )
        )
    if settings.RECORDER_MAX_CHUNK_BYTES <= 0 or settings.RECORDER_MAX_RECORDING_BYTES <= 0:
        errors.append(
            Error("RECORDER_MAX_CHUNK_BYTES and RECORDER_MAX_RECORDING_BYTES must be positive.", id="recordings.E002")
        )
    if settings.RECORDER_PROCESSING_CONCURRENCY < 1:
        errors.append(Error("RECORDER_PROCESSING_CONCURRENCY must be 1 or more.", id="recordings.E005"))
    if settings.RECORDER_WRITE_AUTH not in ("token", "session"):
        errors.append(
            Error(
                f"RECORDER_WRITE_AUTH={settings.RECORDER_WRITE_AUTH!r}; choose token or session.", id="recordings.E006"
            )
        )
    if not 0 <= settings.RECORDER_FINALIZE_GRACE_SECONDS <= settings.RECORDER_FINALIZE_MAX_WAIT_SECONDS <= 86400:
        errors.append(
            Error(
                "RECORDER_FINALIZE_GRACE_SECONDS must be between 0 and RECORDER_FINALIZE_MAX_WAIT_SECONDS, "
                "which must be at most a day.",
                id="recordings.E007",
            )
        )
    if not 0 <= settings.RECORDER_LIVE_BUILD_DELAY_SECONDS <= 60:
        errors.append(
            Error(
                "RECORDER_LIVE_BUILD_DELAY_SECONDS must be between 0 and 60: what is not built while the chunks "
                "arrive is built at Stop.",
                id="recordings.E008",
            )
        )
    errors.extend(_storage_errors())
    return errors


_DELIVERIES_BY_STORAGE = {"local": {"direct", "x-accel-redirect", "x-sendfile"}, "s3": {"direct", "redirect"}}


def _storage_errors() -> list[Error]:
    storage, delivery = settings.RECORDER_STORAGE, settings.RECORDER_MEDIA_DELIVERY
    errors = []
    if storage == "s3" and not settings.AWS_STORAGE_BUCKET_NAME:
        errors.append(Error("RECORDER_STORAGE=s3 needs AWS_STORAGE_BUCKET_NAME.", id="recordings.E003"))
    if delivery not in _DELIVERIES_BY_STORAGE[storage]:
        errors.append(
            Error(
                f"RECORDER_MEDIA_DELIVERY={delivery!r} does not work with RECORDER_STORAGE={storage!r}; "
                f"choose one of {sorted(_DELIVERIES_BY_STORAGE[storage])}.",
                id="recordings.E004",
            )
        )
    return errors
