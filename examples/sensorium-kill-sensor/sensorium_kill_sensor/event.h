/* The record shared by probe.bpf.c and plugin.py (its ctypes twin is checked against BTF in tests). */
#ifndef __KILL_EVENT_H
#define __KILL_EVENT_H

struct kill_event {
	struct sensorium_hdr hdr;
	__s32 target_pid;
	__s32 sig;
};

#endif
