"""Process plumbing: the worker's State and its lifespan, runtime threads, fd and GC settings, the CLI."""
