"""How much of the CPU the hypervisor took while a benchmark ran."""

from fastvit.choices import proc_stat_cpu


class StealMeter:
    """The share of CPU time the hypervisor gave to other guests (/proc/stat's steal) from the meter's
    creation to `share()`: a VM that is idle inside can still lose a third of its cycles to neighbours, and
    then no single-run figure of it is a measurement of the code. None where /proc/stat has no steal field."""

    def __init__(self, path: str = "/proc/stat"):
        self._path = path
        self._start = proc_stat_cpu(path)

    def share(self) -> float | None:
        now = proc_stat_cpu(self._path)
        if now is None or self._start is None:
            return None
        delta = [b - a for a, b in zip(self._start, now, strict=True)]
        total = sum(delta)
        return round(delta[7] / total, 3) if total > 0 else None
