"""What the kernel's verifier said: the verdict and the instruction counts in a libbpf/verifier log.

Pure text work (no libbpf call), shared by `sensorium.bpf.clib` (a failed load's `LibbpfError` carries the
verdict) and `sensorium.bpf.libbpf` (the statistics line of a load with ``stats=True``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

__all__ = ["STATS_LINE", "VERIFIER_LIMIT", "VerifierVerdict", "blamed_program", "stats_of", "verifier_reason"]

VERIFIER_LIMIT = 1_000_000  # BPF_COMPLEXITY_LIMIT_INSNS: processed instructions a load may take
STATS_LINE = re.compile(r"processed (\d+) insns \(limit (\d+)\) max_states_per_insn (\d+) total_states (\d+) "
                    r"peak_states (\d+)")
# Lines of a verifier log that are its trace, not its verdict: instructions, register states, source lines,
# branch and pruning notes, and libbpf's own framing.
_TRACE = re.compile(r"^(\d+: |; |from \d+ to \d+|frame\d|last_idx|regs=|parent |propagating |mark_precise"
                    r"|Func#|Validating |func#|caller:|callee:|returning from |-- BEGIN|-- END|libbpf: |\s*$|"
                    r"arg#\d|Global function |stack depth|verification time|\d+ ?: safe|safe$|processed \d+ insns"
                    r"|to caller at \d+:|from \d+ to \d+:)")


@dataclasses.dataclass(frozen=True)
class VerifierVerdict:
    """What the kernel's verifier said when it refused a program: its own error lines, the instructions it
    processed (when it printed them) and a hint for the usual causes."""

    program: str | None
    error: str
    insns: int | None
    limit: int | None

    @property
    def too_complex(self) -> bool:
        return ("too large" in self.error or "too complex" in self.error or
                (self.insns is not None and self.limit is not None and self.insns > self.limit))

    def text(self) -> str:
        out = [f"verifier: {self.error}"]
        if self.insns is not None:
            out.append(f"verifier: processed {self.insns:,} instructions (limit {self.limit or VERIFIER_LIMIT:,})")
        if self.too_complex:
            out.append("hint: the program is over the verifier's complexity limit on this kernel; this is a "
                       "Sensorium defect (every program must verify within 20% of the limit), please report "
                       "it with `sensorium probe` output")
        elif "unknown func" in self.error or "invalid func" in self.error or "helper call" in self.error:
            out.append("hint: the kernel lacks a helper or kfunc the program uses (`sensorium probe` lists what "
                       "this kernel offers)")
        elif "Permission denied" in self.error or "EPERM" in self.error:
            out.append("hint: the kernel refuses this program type here (lockdown, or a hook it does not offer)")
        return "\n".join(out)


def verifier_reason(log: str) -> VerifierVerdict | None:
    """The verdict in a libbpf/verifier log (the tail libbpf printed on a failed load), or None when the log
    holds no verifier output (an error libbpf raised itself: its own last line is then the reason)."""
    lines = log.splitlines()
    begin = max((i for i, ln in enumerate(lines) if "-- BEGIN PROG LOAD LOG --" in ln), default=-1)
    prog = None
    m = re.findall(r"prog '([^']+)': (?:BPF program load failed|-- BEGIN|failed to load)", log)
    if m:
        prog = m[-1]
    if begin < 0:
        # A log of megabytes (a program over the complexity limit) is kept by its end only: its beginning
        # is gone, but the verdict is at the end, before libbpf's END marker.
        end_at = max((i for i, ln in enumerate(lines) if "-- END PROG LOAD LOG --" in ln), default=-1)
        if end_at < 0:
            return None
        body = lines[1:end_at]  # the first line was cut anywhere: not a line of the verifier's
    else:
        body = lines[begin + 1:]
        end = next((i for i, ln in enumerate(body) if "-- END PROG LOAD LOG --" in ln), len(body))
        body = body[:end]
    insns = limit = None
    for ln in body:
        st = STATS_LINE.search(ln)
        if st:
            insns, limit = int(st.group(1)), int(st.group(2))
    verdict = [ln.strip() for ln in body if not _TRACE.match(ln.strip())]
    # the verdict is the last lines the verifier wrote that are not its trace (usually one or two)
    error = "; ".join(verdict[-3:]) if verdict else "(the kernel gave no reason; see the debug log)"
    return VerifierVerdict(prog, error[:500], insns, limit)



def stats_of(text: str) -> dict[str, int] | None:
    """The counts of the verifier's statistics line in ``text`` (insns, limit, states), None without one."""
    st = STATS_LINE.search(text)
    if st is None:
        return None
    return {"insns": int(st.group(1)), "limit": int(st.group(2)), "max_states_per_insn": int(st.group(3)),
            "total_states": int(st.group(4)), "peak_states": int(st.group(5))}


def blamed_program(tail: str, programs: Iterable[str]) -> str | None:
    """The program libbpf blamed in its log ("libbpf: prog 'x': failed to load: ..."), if it is one of
    ``programs``."""
    names = set(programs)
    found = re.findall(r"prog '([^']+)': (?:failed|BPF program load failed|-- BEGIN)", tail)
    for name in reversed(found):
        if name in names:
            return str(name)
    return None
