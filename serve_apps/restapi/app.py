"""The REST API as a Ray Serve application: ``RestApi`` serves the FastAPI ``api``.

Deployed by cluster_config/serve_config.yaml at route_prefix ``/restapi`` (so
``/restapi/v2/...``, OpenAPI at ``/restapi/docs``). The app is built at import from the
replica's environment; its stores open on the replica's event loop at the first request.
"""

from __future__ import annotations

from ray import serve

from serve_apps.restapi.api import RestApiConfig, create_api

api = create_api(RestApiConfig.from_env())


@serve.deployment(
    name="RestApi",
    # A request is a few store round trips and little CPU: let many overlap.
    max_ongoing_requests=64,
    ray_actor_options={"num_cpus": 0.25},
)
@serve.ingress(api)
class RestApi:
    """Every route is the FastAPI app's; the class only hosts it in a replica."""


app = RestApi.bind()
