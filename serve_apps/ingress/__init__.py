"""The remote_write ingress: authenticates, stamps the tenant, validates, forwards to the TSDB."""
