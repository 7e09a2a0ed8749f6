"""The policy hook engine: TracingPolicy hook items -> BPF objects in the kernel -> Tetragon's events.

Shared by the tracepoint, kprobe, uprobe and lsm sensors; each keeps only its own planner, its own C (where
it has some) and its plugin. One module per concern:

- `selectors`: the kernel limits and the compiler of selectors into the ``sens_cfg`` rodata (mirrors
  ``sensorium/selectors.h`` and ``sensorium/hook/*.h``, the kernel half);
- `plan`: `HookPlan` and the one argument planner (integer types, function parameters, return values);
- `syscalls`: syscall hooks (raw_tp sys_enter/sys_exit filtered by number), planned for kprobe and lsm;
- `probes`: the engine's BPF objects (``hook.bpf.c``, its open-exit build); `openexit`: the early rejection
  table of opened files;
- `hookset`: loading and attaching one policy section (`HookSet`); `sensor`: `HookSensor`, the base of a
  sensor served by hook objects;
- `ring`: the sensor's ring and its batch decoder (`EventRing`); `render`: the record renderers and the
  generated fast path; `native`: the native formatter (``fastrest.c``);
- `budget`: the verifier budget cases of the engine's programs; `testing`: a direct sensor context for tests.

Nothing here is imported by the host at start: a sensor imports what it uses.
"""
