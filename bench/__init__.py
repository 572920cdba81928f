"""convbridge's benchmarks: each module measures one figure against a baseline taken in the
same run; ``python -m bench.run`` (``make bench``) runs them all and writes BENCHMARKS.md."""
