"""`amilab api serve`: EC2's Query API (and STS GetCallerIdentity) over the same library
calls the CLI makes. Requests are parsed and replies serialised from botocore's service
model by moto's protocol classes (`protocol.py`); actions live in one module per resource
family, each a thin translation between EC2's parameters and amilab's operations."""
