"""Backend functions: how they are named and kept (``registry``), how one is
called from a payload and its outcome answered (``calling``, sans-IO), and
how they are found on disk (``loading``, configure time only)."""
