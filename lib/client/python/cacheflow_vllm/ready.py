"""Engine side of the daemon's readiness counters (lib/ipc/cf_ready.h), in Python.

The daemon bumps one 64-bit "layers complete" counter per in-flight restore in a shared-memory
file and wakes waiters through a shared futex on the slot's `seq` word. The connector maps the
same file and waits on one slot for one layer, so vLLM's layer l runs while layers above it are
still restoring. Layout (one 64-byte header, then 64-byte slots):
    header: magic "CFREADY1", u32 n_slots
    slot:   u64 layers, i64 status, u64 req_id, u32 seq, u32 pad, u64 gate, pad
"""
import ctypes
import mmap
import os
import struct

MAGIC = b"CFREADY1"
HDR = 64
SLOT = 64
RUNNING, DONE, IDLE = 0, 1, 2
_SYS_FUTEX = 202  # x86_64; aarch64 uses 98
if os.uname().machine in ("aarch64", "arm64"):
    _SYS_FUTEX = 98
_FUTEX_WAIT = 0

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class Readiness:
    """A read-only view of the daemon's readiness file (mapped shared, never written here)."""

    def __init__(self, path):
        fd = os.open(path, os.O_RDWR)  # futex on a MAP_SHARED page needs a shared mapping
        try:
            size = os.fstat(fd).st_size
            self.map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        if self.map[:8] != MAGIC:
            raise ValueError(f"{path}: not a CacheFlow readiness file")
        self.n_slots = struct.unpack_from("<I", self.map, 8)[0]
        if HDR + self.n_slots * SLOT > size:
            raise ValueError(f"{path}: {self.n_slots} slots but {size} bytes")
        self.path = path
        self._base = ctypes.addressof(ctypes.c_char.from_buffer(self.map))

    def close(self):
        self._base = None
        try:
            self.map.close()
        except BufferError:
            pass  # a ctypes view still alive: the mapping goes with the process

    def read(self, slot):
        """(layers, status, seq) of `slot`. Aligned 8-byte loads are atomic on x86-64/arm64.
        The caller re-reads after every futex wake (cf_ready_wait does the same in C)."""
        off = HDR + slot * SLOT
        layers, status, _req, seq = struct.unpack_from("<QqQI", self.map, off)
        return layers, status, seq

    def futex_wait(self, slot, seq, timeout_s):
        """Sleep until the slot's seq word changes from `seq` (the daemon bumps it on every
        publish) or timeout_s passes. Spurious wakes are fine: callers re-read."""
        ts = _Timespec(int(timeout_s), int((timeout_s - int(timeout_s)) * 1e9))
        _libc.syscall(_SYS_FUTEX, ctypes.c_void_p(self._base + HDR + slot * SLOT + 24), _FUTEX_WAIT,
                      ctypes.c_uint32(seq), ctypes.byref(ts), None, 0)
