"""jobhive workers: the worker library (base, runner) and the model workers."""
