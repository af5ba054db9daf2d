"""jobhive's API server: TOML endpoints, a durable job queue, and the client and worker APIs."""
