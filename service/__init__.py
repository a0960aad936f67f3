"""HTTP service for streaming CMANP inference: FastAPI + a Redis session store. See ``service.app``."""
