#!/usr/bin/env python3
"""Captures the ACPI tables QEMU 10 builds for q35 with each IOMMU.

QEMU boots SeaBIOS without a kernel; SeaBIOS installs the tables in RAM. The
monitor's pmemsave dumps the F-segment (RSDP) and the top of low RAM (where
the tables live with -m 512M); the RSDT is then walked and each table written
to <config>-<SIG>.bin. Run from this directory: python3 capture.py
"""
import os, socket, struct, subprocess, tempfile, time

CONFIGS = {
    "vtd": ["-device", "intel-iommu"],
    "vtd-iotlb": ["-device", "intel-iommu,device-iotlb=on"],
    "amdvi": ["-device", "amd-iommu,pt=off"],
    "virtio": ["-device", "virtio-iommu-pci"],
}
RAM_TOP, WINDOW = 0x20000000, 0x100000


def capture(name, extra):
    tmp = tempfile.mkdtemp()
    sock = os.path.join(tmp, "mon.sock")
    q = subprocess.Popen(["qemu-system-x86_64", "-machine", "q35", "-m", "512M", "-display", "none", "-no-reboot",
                          "-vga", "none", "-nic", "none", "-serial", "none", "-device", "edu", *extra,
                          "-monitor", f"unix:{sock},server,nowait"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        time.sleep(2.0)  # let SeaBIOS build and install the tables
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        s.settimeout(5)
        def command(text):
            s.sendall(text.encode() + b"\n")
            buf = b""
            while not buf.rstrip().endswith(b"(qemu)"):
                buf += s.recv(4096)
        buf = b""
        while b"(qemu)" not in buf:
            buf += s.recv(4096)
        fseg, ram = os.path.join(tmp, "f.bin"), os.path.join(tmp, "ram.bin")
        command(f"pmemsave 0xf0000 0x10000 \"{fseg}\"")
        command(f"pmemsave {RAM_TOP - WINDOW:#x} {WINDOW:#x} \"{ram}\"")
        s.sendall(b"quit\n")
        q.wait(timeout=10)
    finally:
        if q.poll() is None:
            q.kill()
    f, r = open(fseg, "rb").read(), open(ram, "rb").read()
    rsdp = f.index(b"RSD PTR ")
    rsdt = struct.unpack_from("<I", f, rsdp + 16)[0]
    def table(pa):
        off = pa - (RAM_TOP - WINDOW)
        length = struct.unpack_from("<I", r, off + 4)[0]
        return r[off:off + length]
    root = table(rsdt)
    for i in range((len(root) - 36) // 4):
        t = table(struct.unpack_from("<I", root, 36 + 4 * i)[0])
        sig = t[:4].decode()
        if sig in ("DMAR", "IVRS", "VIOT", "MCFG", "APIC"):
            open(f"{name}-{sig}.bin", "wb").write(t)
            print(f"{name}-{sig}.bin: {len(t)} bytes")


for name, extra in CONFIGS.items():
    capture(name, extra)


def capture_arm(name, machine):
    """aarch64 virt only gets ACPI tables from UEFI firmware: boot edk2, dump RAM, find the tables."""
    tmp = tempfile.mkdtemp()
    sock = os.path.join(tmp, "mon.sock")
    q = subprocess.Popen(["qemu-system-aarch64", "-machine", machine, "-cpu", "max", "-m", "1G", "-display", "none",
                          "-no-reboot", "-nic", "none", "-serial", "none", "-device", "edu",
                          "-bios", "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd",
                          "-monitor", f"unix:{sock},server,nowait"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        time.sleep(25.0)  # edk2 under TCG installs the tables within seconds; leave margin
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        s.settimeout(60)
        buf = b""
        while b"(qemu)" not in buf:
            buf += s.recv(4096)
        ram = os.path.join(tmp, "ram.bin")
        s.sendall(f"pmemsave 0x40000000 0x40000000 \"{ram}\"\n".encode())
        buf = b""
        while not buf.rstrip().endswith(b"(qemu)"):
            buf += s.recv(4096)
        s.sendall(b"quit\n")
        q.wait(timeout=30)
    finally:
        if q.poll() is None:
            q.kill()
    r = open(ram, "rb").read()
    for sig in (b"IORT", b"MCFG", b"APIC"):
        at = 0
        while True:
            at = r.find(sig, at)
            if at < 0:
                break
            length = struct.unpack_from("<I", r, at + 4)[0]
            if 36 <= length < 0x10000 and sum(r[at:at + length]) % 256 == 0:
                open(f"{name}-{sig.decode()}.bin", "wb").write(r[at:at + length])
                print(f"{name}-{sig.decode()}.bin: {length} bytes")
                break
            at += 4
    os.remove(ram)


if os.path.exists("/usr/share/qemu-efi-aarch64/QEMU_EFI.fd"):
    capture_arm("virt-smmuv3", "virt,iommu=smmuv3,gic-version=3")
