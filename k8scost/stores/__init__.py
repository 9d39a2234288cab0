"""The stores the SaaS side keeps its state in: MongoDB (accounts, resources), ClickHouse (expenses)."""
