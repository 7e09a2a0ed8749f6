"""``sensorium policy replay``: what a policy would have done to recorded events (docs/replay.md).

records.py reads the recording (JSON lines in Tetragon's export shape), evaluate.py is the kernel's
selector semantics in user space, report.py runs policies over a recording and keeps the books, cli.py
is the command.
"""
