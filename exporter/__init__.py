"""The allocation-exporter: Kubecost/OpenCost allocations as hourly-rate gauges for Prometheus.

Runs in the customer's cluster (``python -m exporter``). ``allocation`` parses answers,
``snapshot`` defines the cost metrics and computes them, ``collector`` exposes them with the
health metrics, ``poller`` polls Kubecost, ``server`` runs the process.
"""
