"""The eBPF layer: libbpf ctypes binding (`libbpf`), ring-buffer reader (`ringbuf`), CO-RE object build
and cache (`build`), kernel capability probe (`probe`), and the C headers every probe includes
(``include/sensorium/*.h``). Importing this package does not load libbpf."""
