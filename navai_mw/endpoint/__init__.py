"""The sans-IO HTTP endpoint: the route table, the rules every navai route
shares (CORS, method, framing, body, the guard, the answer), and one module
per route in ``routes/``."""
