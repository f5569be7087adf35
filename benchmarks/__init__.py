"""navai_mw's benchmark suite.

Run everything with one command from the repository root::

    python -m benchmarks           # the full run (a few minutes); writes docs/benchmarks.md
    python -m benchmarks --quick   # a short smoke run; writes benchmarks/results/quick/

Needs the ``bench`` extra (``pip install -e '.[bench]'``) and ``wrk`` on the
PATH for the real-server benchmarks (``apt-get install wrk``), and
``redis-server`` for the guard's (``apt-get install redis-server``); without
them those are skipped and said to be.

Every benchmark interleaves its arms round by round and reports, for each
comparison, the median of the per-round ratios with their range, so that a
machine that is busy with other work shifts both arms of a ratio alike.
Absolute figures are printed too, but they belong to the machine.

Only loopback traffic; every load loop is bounded in count and in time.
Nothing here is a pass/fail test: targets are reported as met or missed.
"""
