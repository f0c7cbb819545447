#!/usr/bin/env python3
"""Writes the small synthetic seeds of the fuzz targets that have no captured
table in the repository (GTDT, the DSDT's _PRT, the boot hand-off, ELF
images, page-table op sequences). The captured QEMU tables
(firmware/acpi-tables/tests/data/*.bin, firmware/devicetree/tests/data/*.dtb)
are read in place by `cargo xtask fuzz`. Run from this directory."""
import os, struct

def write(target, name, data):
    os.makedirs(target, exist_ok=True)
    with open(os.path.join(target, name), "wb") as f:
        f.write(data)

def acpi(sig, rev, body):
    t = bytearray(36) + bytearray(body)
    t[0:4] = sig
    t[4:8] = struct.pack("<I", len(t))
    t[8] = rev
    t[10:16] = b"PCULLS"
    t[9] = (-sum(t)) & 0xFF
    return bytes(t)

# GTDT as QEMU virt builds it (hw/arm/virt-acpi-build.c): PPIs 29, 30, 27, 26.
body = bytearray(60)
body[0:8] = struct.pack("<Q", 2**64 - 1)
for off, gsiv in [(12, 29), (20, 30), (28, 27), (36, 26)]:
    body[off:off + 8] = struct.pack("<II", gsiv, 0)
body[44:52] = struct.pack("<Q", 2**64 - 1)
write("gtdt", "qemu-virt", acpi(b"GTDT", 2, body))

# _PRT: QEMU virt's shape (hw/pci-host/gpex-acpi.c), 4 slots, links L000..L003.
def pkg(content):
    total = len(content) + 1
    if total < 0x40:
        return bytes([total]) + content
    total += 1
    return bytes([0x40 | (total & 0xF), (total >> 4) & 0xFF]) + content

def dword(v):
    return b"\x0c" + struct.pack("<I", v)

def prt(slots, direct):
    entries = b""
    for slot in range(slots):
        for pin in range(4):
            e = b"\x04" + dword((slot << 16) | 0xFFFF) + (b"\x00" if pin == 0 else bytes([0x0A, pin]))
            e += (b"\x00" + dword(35 + (slot + pin) % 4)) if direct else (b"L00%d" % ((slot + pin) % 4) + b"\x00")
            entries += b"\x12" + pkg(e)
    aml = b"\x08_PRT\x12" + pkg(bytes([slots * 4]) + entries)
    for i in range(0 if direct else 4):
        crs = bytes([0x0A, 14, 0x89, 6, 0, 0x09, 1]) + struct.pack("<I", 35 + i) + bytes([0x79, 0])
        body = b"L00%d" % i + b"\x08_HID\x0dPNP0C0F\x00" + b"\x08_CRS\x11" + pkg(crs)
        aml += b"\x5b\x82" + pkg(body)
    return aml
write("prt", "links", prt(4, False))
write("prt", "direct", prt(2, True))

# Boot hand-off: mode 0 = raw BootInfo bytes (layout of boot/bootinfo), mode 1 = loader API.
regions = [(0, 0x9f000, 0), (0x100000, 0x1ff00000, 0), (0xfec00000, 0x1000, 1)]
raw = struct.pack("<QII", int.from_bytes(b"PCBOOTIN", "little"), 1, 3448)
for i in range(128):
    b, s, k = regions[i] if i < len(regions) else (0, 0, 1)
    raw += struct.pack("<QQQ", b, s, k)
cmd, loader = b"ktest=all init=demo", b"pvh"
raw += struct.pack("<Q", len(regions)) + cmd.ljust(256, b"\0") + struct.pack("<Q", len(cmd))
raw += loader.ljust(48, b"\0") + struct.pack("<Q", len(loader)) + struct.pack("<QQQQ", 0xf5a40, 0, 0x1000000, 0x1400000)
assert len(raw) == 3448
write("bootinfo", "raw-pvh", b"\x00" + raw)
api = b"\x01" + bytes([len(loader)]) + loader + struct.pack("<H", len(cmd)) + cmd + struct.pack("<QQ", 0xf5a40, 0x4000_0000)
api += bytes([len(regions)]) + b"".join(struct.pack("<QQBB", b, s, k, 1) for b, s, k in regions)
api += struct.pack("<HB", 16, 0x7f)
write("bootinfo", "api", api)

# ELF64 executables with two PT_LOAD segments (R+X text, R+W data with .bss).
def elf(machine):
    segs = [(0x400000, 0x1000, 0x80, 5), (0x402000, 0x2000, 0x10, 6)]
    d = bytearray(64 + 56 * len(segs))
    d[0:6] = b"\x7fELF\x02\x01"
    d[16:20] = struct.pack("<HH", 2, machine)
    d[24:40] = struct.pack("<QQ", 0x401000, 64)
    d[54:58] = struct.pack("<HH", 56, len(segs))
    payload = len(d)
    for i, (va, mem, file, flags) in enumerate(segs):
        d[64 + 56 * i:64 + 56 * (i + 1)] = struct.pack("<IIQQQQQQ", 1, flags, payload, va, va, file, mem, 0x1000)
    return bytes(d) + b"\xab" * 0x100
write("elf", "x86_64", elf(62))
write("elf", "aarch64", elf(183))

# Page-table engine: format selector, then ops (map, map, lookup, unmap).
def mapop(iova_page, pa_page, pages, perms=3):
    return bytes([0, 5]) + struct.pack("<H", iova_page) + bytes([5]) + struct.pack("<H", pa_page) + bytes([2, pages, perms])
seq = mapop(1, 0x10, 4) + mapop(0x200, 0x400, 0) + bytes([1, 2]) + struct.pack("<H", 1) + bytes([2, 1, 2]) + struct.pack("<H", 2) + bytes([3, 5]) + struct.pack("<H", 2) + bytes([2, 5]) + struct.pack("<H", 1) + bytes([2, 4])
for sel in range(6):
    write("pgtable", "seq-%d" % sel, bytes([sel]) + seq)

# Foreign walk: 2 tables, whole range, big budget, root = table 1, one table pointer and one leaf.
walk = bytes([0, 1]) + struct.pack("<QQH", 0, 2**64 - 1, 0xFFFF) + bytes([0])
walk += bytes([0]) + struct.pack("<HQ", 0, 0x2003) + bytes([1]) + struct.pack("<HQ", 1, 0x5003)
for sel in range(6):
    write("walker", "two-tables-%d" % sel, bytes([sel]) + walk[1:])
