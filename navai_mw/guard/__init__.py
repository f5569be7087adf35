"""The guard, sans-IO: the client address, authorization (the user's hook or
a built-in authorizer) and the rate-limit decision."""
