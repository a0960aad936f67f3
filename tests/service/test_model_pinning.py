"""A session pins its model's name and fingerprint: when the served model is replaced or removed,
the session gets 409 with an explanation (never predictions from weights that did not build its
state), and its stored state is left untouched.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from service.client import CMANPClient
from tests.service.helpers import AUTH, TINY, build_checkpoint, live_server, make_settings, raw_session


def test_replaced_or_removed_model_gives_409(client: CMANPClient, redis_server, redis_client, tmp_path: Path) -> None:
    session_id = client.create_session().session_id  # pinned to 'tiny' (seed 0)
    client.add_context(session_id, [0.5, 1.5], [1.0, -1.0])
    before = raw_session(redis_client, session_id)

    replaced = tmp_path / "replaced"
    replaced.mkdir()
    build_checkpoint(replaced, "tiny", TINY, seed=1)  # same name, other weights
    removed = tmp_path / "removed"
    removed.mkdir()
    build_checkpoint(removed, "other", TINY, seed=2)

    for directory, words in [(replaced, "was replaced"), (removed, "no longer served")]:
        settings = make_settings(redis_server.url, directory, default_model=next(directory.glob("*.safetensors")).stem)
        with live_server(settings) as url, httpx.Client(base_url=url, headers=AUTH) as http:
            for path, body in [("context", {"x": [[0.0]], "y": [[0.0]]}), ("predict", {"x": [[0.0]]})]:
                response = http.post(f"/v1/sessions/{session_id}/{path}", json=body)
                assert response.status_code == 409, response.text
                assert words in response.json()["detail"] and "create a new session" in response.json()["detail"]
            assert http.get(f"/v1/sessions/{session_id}").json()["num_points"] == 2  # metadata stays readable
        assert raw_session(redis_client, session_id) == before

    assert client.predict(session_id, [0.0]).num_points == 2  # the original model still serves it
