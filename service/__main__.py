"""``python -m service`` / ``cmanp-serve``: run the service with uvicorn, configured by ``CMANP_*``.

One worker (``CMANP_WORKERS=1``) serves in this process; more run as worker processes under
this one (``service.workers``).
"""

from __future__ import annotations

import sys

import uvicorn

from service.logs import configure_logging
from service.settings import Settings
from service.workers import Supervisor, shared_by_workers


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    print(
        f"CMANP service: http://{settings.host}:{settings.port}  (API docs: http://{settings.host}:{settings.port}/docs)"
        f"  {settings.workers} worker process(es)"
    )
    # log_config=None: uvicorn's loggers go through the JSON handler; its access log is replaced by
    # ours, which logs route templates instead of raw paths.
    options = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": settings.shutdown_grace_seconds,
    }
    if settings.workers == 1:
        from service.app import create_app  # here: a supervisor of worker processes never loads torch

        uvicorn.run(create_app(settings), **options)
        return
    with shared_by_workers(settings):
        status = Supervisor(settings.workers, options).run()
    sys.exit(status)


if __name__ == "__main__":
    main()
