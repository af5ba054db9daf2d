"""The server's routes, one module per group, each with its own RouteTableDef: clients
(endpoints and submits), jobs (status, events, cancel), workers (poll, progress, results,
goodbye), status (health and status) and pages (the browser side)."""
