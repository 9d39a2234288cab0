"""The REST API (FastAPI on Ray Serve, ``/restapi``): organizations, users, cloud accounts, costs."""
