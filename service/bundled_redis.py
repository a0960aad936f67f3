"""The bundled redis-server as the service runs it when ``CMANP_REDIS_URL`` is unset.

Its own module so that the multi-worker supervisor (``service.workers``), which starts it for its
workers, needs neither the app nor torch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from service.embedded_redis import EmbeddedRedis
from service.settings import Settings

logger = logging.getLogger(__name__)


@contextmanager
def start_bundled_redis(settings: Settings) -> Iterator[EmbeddedRedis]:
    """The bundled redis-server on ``REDIS_DATA_DIR``, running until the block exits."""
    with EmbeddedRedis(settings.redis_data_dir, options={"appendfsync": settings.redis_appendfsync}) as bundled:
        logger.info("started the bundled redis-server at %s (data in %s)", bundled.url, settings.redis_data_dir)
        yield bundled
