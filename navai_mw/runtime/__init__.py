"""The I/O layer: transports, the drivers that run the sans-IO steps over
them, the performers of every other effect (hooks, rate counts, function
calls, the calls' store), and the public client functions. Nothing here
decides anything: what to do comes from the layers below, as effects."""
