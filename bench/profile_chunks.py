"""Profile the chunk path in-process with pyinstrument: N multipart chunk uploads through Django.

    python -m bench.profile_chunks [--chunks 300] [--chunk-kib 256]   # make bench-profile
    python -m bench.profile_chunks --smoke --output /tmp/profile.txt  # for the test suite

Writes a text profile to docs/profiles/chunk-path.txt.
"""

import argparse
import os
import time
from pathlib import Path

from bench.harness import PROJECT_DIR, multipart_body, work_directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=300)
    parser.add_argument("--chunk-kib", type=int, default=256)
    parser.add_argument("--no-profile", action="store_true", help="time only, without the profiler's overhead")
    parser.add_argument("--output", default=str(PROJECT_DIR / "docs" / "profiles" / "chunk-path.txt"))
    parser.add_argument("--smoke", action="store_true", help="a few chunks, for the test suite")
    args = parser.parse_args()
    if args.smoke:
        args.chunks, args.chunk_kib = 5, 16
    with work_directory("bench-profile-") as temporary:
        profile(args, Path(temporary))


def profile(args, work_dir: Path) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="recorder_project.settings",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY="profile-only-" * 4,
        DJANGO_SECURE_SSL_REDIRECT="0",
        DATABASE_URL=f"sqlite:///{work_dir / 'db.sqlite3'}",
        MEDIA_ROOT=str(work_dir / "media"),
        DJANGO_ALLOWED_HOSTS="testserver",
    )
    import django

    django.setup()
    from django.core.management import call_command
    from django.test import Client
    from pyinstrument import Profiler

    call_command("migrate", verbosity=0)
    client = Client()
    started = client.post("/api/start-recording/", {}, content_type="application/json").json()
    header = (PROJECT_DIR / "tests/fixtures/vp8_opus/chunk_000.bin").read_bytes()
    chunk = (header * (args.chunk_kib * 1024 // len(header) + 1))[: args.chunk_kib * 1024]
    bodies = [
        multipart_body({"session_id": started["session_id"], "chunk_index": str(index)}, "video_chunk", chunk)
        for index in range(args.chunks)
    ]
    headers = {"Authorization": f"Bearer {started['upload_token']}"}

    def upload_all() -> float:
        began = time.perf_counter()
        for body, content_type in bodies:
            response = client.generic(
                "POST", "/api/receive-video-chunk/", body, content_type=content_type, headers=headers
            )
            assert response.status_code == 201, response.content
        return time.perf_counter() - began

    if args.no_profile:
        elapsed = upload_all()
        print(f"{elapsed / args.chunks * 1000:.2f} ms per chunk (no profiler)")
        return
    profiler = Profiler(interval=0.0005)
    with profiler:
        elapsed = upload_all()
    report = profiler.output_text(unicode=False, color=False, show_all=bool(os.environ.get("PROFILE_SHOW_ALL")))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(
        f"{args.chunks} multipart chunks of {args.chunk_kib} KiB in {elapsed:.2f} s "
        f"({elapsed / args.chunks * 1000:.2f} ms each)\n\n{report}"
    )
    print(f"{elapsed / args.chunks * 1000:.2f} ms per chunk; profile in {args.output}")


if __name__ == "__main__":
    main()
