"""The stores the SaaS side keeps its state in: MongoDB (accounts, resources), ClickHouse (expenses).

``StoreUnavailable`` is how every store client says it is down, the TSDB's (``k8scost.tsdb``) too.
"""


class StoreUnavailable(RuntimeError):
    """A store (MongoDB, ClickHouse, the TSDB) could not be reached or failed to answer; the cause is chained.

    The apps answer it 503, which their clients retry; actors and jobs fail the whole cycle
    on it and retry later: every write of the stores is idempotent or atomic, so a retry
    completes what a failure interrupted. ``store`` names the store, fit for an answer; the
    message adds the driver's detail, for the logs.
    """

    def __init__(self, store: str, detail: str) -> None:
        super().__init__(store, detail)  # both in args, so it unpickles: Ray ships it from actors and tasks
        self.store = store
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.store}: {self.detail}"
