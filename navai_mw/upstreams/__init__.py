"""Sans-IO, one module per upstream API: the requests to make and the reading
of their answers. Imports only :mod:`navai_mw.core`."""
