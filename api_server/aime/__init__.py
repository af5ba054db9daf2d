"""AIME API server compatibility: AIME's endpoint configs and its HTTP protocol, as adapters
over jobhive's endpoints, queue, store and workers.

- `cfg`: reads `aime_api_endpoint.cfg` files into jobhive endpoints (`config.Endpoint`) plus the
  AIME facts jobhive's own config has no place for (`AimeInfo`), and lists the keys it does
  not support, by file and key.
- `sessions`: the `client_session_auth_key` of an AIME login, a signed token (no server state).
- `shapes`: AIME's reply shapes, built from jobhive's jobs, grants and endpoints.
- `clients`, `workers`: AIME's client and worker routes, mounted under `[SERVER] aime_prefix`.

Nothing here keeps jobs of its own: every AIME request becomes a call on the app's store.
"""
