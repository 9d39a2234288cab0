"""Tooling for the demo, the tests and the benchmarks: never installed, never in the image.

- ``devstack.stack``: the whole stack on one machine (``scripts/services.sh``'s real
  servers and a local Ray, Serve deployed from ``cluster_config/serve_config.yaml``).
- ``devstack.simulator``: the Kubecost/OpenCost simulator with its exact ground truth, the
  history replay into TSDB blocks, and whole simulated customer clusters
  (``python -m devstack.simulator --help``).

``pip install .`` leaves this package out (``pyproject.toml``), and so does the SaaS image
(``cluster_config/Dockerfile``): scripts and tests import it from the repository root.
Nothing the SaaS runs may import it (``tests/test_layout.py``).
"""
