"""`stc serve`: many live streams on one model behind an HTTP API and a web page.

- `shared_model.SharedModel`: the one patched model, a lock, and each stream's STC state swapped
  in for its turn (`StateSlot`), so that sessions never see each other's state;
- `streams.StreamManager`: add / list / remove streams, the capture threads, the ingestion thread,
  questions, per-stream and server-wide memory budgets;
- `live_stream.LiveStream`: one stream: its source, capture, session and what the page shows;
- `sources.SourceOpener`: which sources a client may name (files only under the media root);
- `requests`: what a client may ask for, checked (every bad value a 4xx);
- `app.create_app`: the HTTP API (JSON, OpenAI-style chat completions) and the page (`page.html`);
- `loadtest`: a load test of a running server over HTTP (docs/serve_load.py).

The ASGI stack (Starlette, uvicorn) is the optional extra `stc-videollm[serve]`; only `app`
imports it (and `loadtest` the extra's httpx).
"""
