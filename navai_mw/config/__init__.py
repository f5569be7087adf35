"""Configure time only: reading ``os.environ``, loading backend functions, and
building the :class:`~navai_mw.endpoint.endpoint.Endpoint` the shells serve."""
