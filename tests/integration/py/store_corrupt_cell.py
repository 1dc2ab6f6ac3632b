# store_corrupt_cell.py STORE INDEX LAYER MODE (tests/integration/refengine_reuse_corrupt.sh):
# flip the sign of every float (f32 store) of one cell, layer LAYER of the INDEX-th full chunk
# the journal holds (its live ADD records, in journal order), in its data file. MODE "data": only the data file
# (the cell's checksum catches it on read); "past": also rewrite that cell's checksum in the
# journal record, and the record's own CRC, so the store serves the wrong bytes as a writer bug
# would. Layouts: cf__hdr_t and the journal record in lib/store/cf_store_journal.c, slots in
# cf__slot_pos (lib/store/cf_store_io.c). Prints where it wrote.
import ctypes, struct, sys
store, idx, layer, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
xx = ctypes.CDLL("libxxhash.so.0")
xx.XXH3_64bits.restype = ctypes.c_uint64
xx.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
h = open(store + "/header", "rb").read()
n_layers = struct.unpack_from("<I", h, 40)[0]
spf = struct.unpack_from("<i", h, 52)[0]
cell_bytes, cell_stride, slot_bytes = struct.unpack_from("<QQQ", h, 56)
R = 48 + 8 * n_layers
j = bytearray(open(store + "/journal", "rb").read())
C = struct.unpack_from("<I", h, 36)[0]
# the live ADD records of full chunks, by the replay's rules: ADD(k, s) maps k to s and unmaps
# what else s or k held; DEL(k, s) unmaps k only while it maps to s
live = {}  # key -> (record offset, slot)
for o in range(0, len(j) - R + 1, R):
    magic, typ = struct.unpack_from("<II", j, o)
    if magic != 0x524A4643 or typ not in (1, 2):
        continue
    key, (slot, ntok) = bytes(j[o + 16:o + 32]), struct.unpack_from("<iI", j, o + 32)
    if typ == 2:
        if live.get(key, (0, None))[1] == slot:
            del live[key]
        continue
    live = {k: v for k, v in live.items() if v[1] != slot}
    live[key] = (o, slot)
adds = sorted(o for o, s in live.values() if struct.unpack_from("<I", j, o + 36)[0] == C)
o = adds[idx]
slot, ntok = struct.unpack_from("<iI", j, o + 32)
cb = cell_bytes
path = "%s/data.%03d" % (store, slot // spf)
off = (slot % spf) * slot_bytes + layer * cell_stride
with open(path, "r+b") as f:
    f.seek(off)
    cell = bytearray(f.read(cb))
    for i in range(0, len(cell), 4):  # every float's sign: far off where it is not 0, never NaN
        cell[i + 3] ^= 0x80
    f.seek(off)
    f.write(cell)
if mode == "past":
    struct.pack_into("<Q", j, o + 40 + 8 * layer, xx.XXH3_64bits(bytes(cell), len(cell)))
    struct.pack_into("<Q", j, o + R - 8, xx.XXH3_64bits(bytes(j[o:o + R - 8]), R - 8))
    open(store + "/journal", "r+b").write(j)
print("slot %d layer %d: %d bytes at %s+%d" % (slot, layer, cb, path, off))
