"""Events of a forked child before and after its exec name the right process image.

A child runs its parent's image from fork until exec; what it does in between belongs to the clone (the
parent's binary, flags ``clone``), what it does after to the new image. The exec record and the hook's
records come through different rings and are decoded in batches, so the agent must attribute each record
by its time, not by what the process cache holds when the batch is decoded (that is the exec'd image as
soon as the exec record has been read).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_policy_e2e import cli, policy

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(os.geteuid() != 0, reason="loads eBPF programs: needs root")]

CHILDREN = 20

FORKER = textwrap.dedent("""\
    import os, sys
    target, n = sys.argv[1], int(sys.argv[2])
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os.close(os.open(target, os.O_RDONLY))       # before exec: still this interpreter
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            os.execv("/bin/cat", ["cat", target])         # after exec: cat opens it again
        os.waitpid(pid, 0)
        print(pid, flush=True)
""")


def test_pre_exec_calls_belong_to_the_clone_and_post_exec_calls_to_the_new_image(agent, tmp_path: Path) -> None:
    sock = tmp_path / "run" / "api.sock"
    h = agent({"api": {"socket": str(sock)}, "sensors": {"tracepoint": {"enabled": True}}})
    target = tmp_path / "watched.txt"
    target.write_text("x\n")
    pfile = tmp_path / "watch.yaml"
    pfile.write_text(policy("fork-then-exec", target))
    cli(sock, "policy", "add", str(pfile))
    forker = tmp_path / "forker.py"
    forker.write_text(FORKER)
    out = subprocess.run([sys.executable, str(forker), str(target), str(CHILDREN)], capture_output=True,
                         text=True, check=True, timeout=60)
    pids = [int(x) for x in out.stdout.split()]
    assert len(pids) == CHILDREN

    def opens(events: list[dict]) -> dict[int, list[dict]]:
        by_pid: dict[int, list[dict]] = {}
        for e in events:
            body = e.get("process_tracepoint")
            if body and body.get("policy_name") == "fork-then-exec" and body["process"]["pid"] in pids:
                by_pid.setdefault(body["process"]["pid"], []).append(body)
        return by_pid

    h.wait_for(lambda _e: sum(map(len, opens(h.events()).values())) >= 2 * CHILDREN, timeout=60)
    python = os.path.realpath(sys.executable)
    cat = os.path.realpath("/bin/cat")
    got = opens(h.events())
    wrong = []
    for pid in pids:
        row = sorted((b["process"]["binary"], b["process"]["flags"], b["process"]["exec_id"]) for b in got[pid])
        if [(b, f) for b, f, _ in row] != sorted([(python, "clone"), (cat, "execve clone")]) \
                or row[0][2] == row[1][2]:
            wrong.append((pid, row))
    assert not wrong, f"{len(wrong)} of {CHILDREN} children misattributed, e.g. {wrong[:3]}"
    # Nothing was exported twice or lost on the way.
    assert json.loads(cli(sock, "policy", "list", "--json").stdout)[0]["events"] >= 2 * CHILDREN
