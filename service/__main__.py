"""``python -m service`` / ``cmanp-serve``: run the service with uvicorn, configured by ``CMANP_*``."""

from __future__ import annotations

import logging

import uvicorn

from service.app import create_app
from service.settings import Settings


def main() -> None:
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(
        f"CMANP service: http://{settings.host}:{settings.port}  (API docs: http://{settings.host}:{settings.port}/docs)"
    )
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)


if __name__ == "__main__":
    main()
