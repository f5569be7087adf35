"""One module per navai route, each with ``handle(settings, call)``: the
route's own work, past every shared HTTP rule."""
