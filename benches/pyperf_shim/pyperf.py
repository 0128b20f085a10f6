"""Just enough of pyperf's API for pyperformance's benchmark scripts to run
in one process, natively or in capsa (which has no subprocesses for pyperf's
workers).

Each `bench_*` call calibrates a loop count until one sample takes at least
`--min-time` seconds (0.2 by default), takes `--samples` samples (5), and
prints one JSON line: {"name": ..., "seconds_per_loop": [...]}.
"""

import argparse
import json
import time

perf_counter = time.perf_counter


class Runner:
    def __init__(self, *args, add_cmdline_args=None, **kwargs):
        self.metadata = {}
        self.argparser = argparse.ArgumentParser()
        self.argparser.add_argument("--samples", type=int, default=5)
        self.argparser.add_argument("--min-time", type=float, default=0.2)
        self.args = None

    def parse_args(self, args=None):
        if self.args is None:
            self.args, _ = self.argparser.parse_known_args(args)
        return self.args

    def bench_func(self, name, func, *args, inner_loops=None, **kwargs):
        def timed(loops):
            t0 = perf_counter()
            for _ in range(loops):
                func(*args)
            return perf_counter() - t0

        self._run(name, timed, inner_loops)

    def bench_time_func(self, name, time_func, *args, inner_loops=None, **kwargs):
        self._run(name, lambda loops: time_func(loops, *args), inner_loops)

    def _run(self, name, timed, inner_loops):
        opts = self.parse_args()
        timed(1)  # warm-up
        loops = 1
        while True:
            t = timed(loops)
            if t >= opts.min_time or loops >= 1 << 20:
                break
            loops *= 2
        inner = inner_loops or 1
        samples = [timed(loops) / (loops * inner) for _ in range(opts.samples)]
        print(json.dumps({"name": name, "seconds_per_loop": samples}), flush=True)
