"""``python -m service`` / ``cmanp-serve``: run the service with uvicorn, configured by ``CMANP_*``."""

from __future__ import annotations

import uvicorn

from service.app import create_app
from service.logs import configure_logging
from service.settings import Settings


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    print(
        f"CMANP service: http://{settings.host}:{settings.port}  (API docs: http://{settings.host}:{settings.port}/docs)"
    )
    # log_config=None: uvicorn's loggers go through the JSON handler; its access log is replaced by
    # ours, which logs route templates instead of raw paths.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
    )


if __name__ == "__main__":
    main()
