"""Metroculus: the SaaS's cost-query API, integrating the tenants' hourly-rate gauges in the TSDB."""
