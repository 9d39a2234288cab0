"""The stores the SaaS side keeps its state in: MongoDB (accounts, resources), ClickHouse (expenses)."""


class StoreUnavailable(RuntimeError):
    """A store could not be reached or refused a request; the cause is chained.

    Callers fail the whole cycle on it and retry later: every write of the stores is
    idempotent or atomic, so a retry completes what a failure interrupted.
    """
