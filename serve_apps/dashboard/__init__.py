"""The cost dashboard: a single page (static/) over the REST API, served by Ray Serve at ``/``."""
