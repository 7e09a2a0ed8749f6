"""The Python twin of what every probe's records share (``include/sensorium/common.h``)."""

from __future__ import annotations

import ctypes


class SensoriumHdr(ctypes.Structure):
    """``struct sensorium_hdr``: the first 24 bytes of every ring record (type, flags, size, ktime,
    pid = tgid, tid). Nest it as the first field of a sensor's record struct; the layout test checks it
    against each object's BTF."""

    _fields_ = [
        ("type", ctypes.c_uint16),
        ("flags", ctypes.c_uint16),
        ("size", ctypes.c_uint32),
        ("ktime", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
    ]
