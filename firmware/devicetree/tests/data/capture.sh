#!/bin/sh
# Regenerates the QEMU 10.0 virt device trees used by the tests (dtc repacks them small).
set -e
cd "$(dirname "$0")"
tmp=$(mktemp -d)
qemu-system-aarch64 -machine virt,gic-version=3,iommu=smmuv3,virtualization=on,dumpdtb=$tmp/a.dtb -cpu max -m 1G -nographic -device edu
qemu-system-aarch64 -machine virt,gic-version=3,virtualization=on,dumpdtb=$tmp/b.dtb -cpu max -m 1G -nographic -device virtio-iommu-pci -device edu
qemu-system-aarch64 -machine virt,gic-version=3,iommu=smmuv3,virtualization=on,dumpdtb=$tmp/c.dtb -cpu max -smp 4 -m 1G -nographic -device edu
dtc -I dtb -O dtb -o virt-smmuv3.dtb $tmp/a.dtb
dtc -I dtb -O dtb -o virt-smmuv3-smp4.dtb $tmp/c.dtb
dtc -I dtb -O dtb -o virt-virtio.dtb $tmp/b.dtb
rm -rf "$tmp"
