"""The sans-IO vocabulary every layer shares: errors, HTTP values, options and
requests, effects, the upstream exchange's rules. Imports nothing of the
layers above, and no I/O library."""
