//! Bootable disk images for the UEFI path: a GPT disk with one EFI system
//! partition (FAT32) holding the loader at the removable-media path
//! (`\EFI\BOOT\BOOTX64.EFI` / `BOOTAA64.EFI`, UEFI 2.10 §3.5.1.1), the kernel
//! at `\portcullis\kernel` and its command line at `\portcullis\cmdline`.
//!
//! The same image boots QEMU (`cargo xtask run|test --boot uefi`) and real
//! machines (`cargo xtask image`, then written to a USB stick).

use std::io::{Cursor, Seek, SeekFrom, Write};
use std::path::Path;

const SECTOR: u64 = 512;
/// Whole disk: 64 MiB, enough for a FAT32 volume of 512-byte clusters.
const DISK_SECTORS: u64 = 64 * 1024 * 1024 / SECTOR;
/// The partition starts at 1 MiB (the usual alignment).
const FIRST_LBA: u64 = 2048;
/// GPT partition entries: 128 of 128 bytes (32 sectors), the minimum the spec asks for.
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
const ENTRY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR;
/// Last usable LBA: before the backup entries and the backup header.
const LAST_LBA: u64 = DISK_SECTORS - 1 - ENTRY_SECTORS - 1;
/// `C12A7328-F81F-11D2-BA4B-00A0C93EC93B`, the EFI system partition type (UEFI 2.10 §5.3.3).
const ESP_TYPE: [u8; 16] = guid(0xC12A_7328, 0xF81F, 0x11D2, [0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B]);

/// A GUID in its on-disk (mixed-endian) byte order.
const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]
}

/// A version-4-shaped GUID derived from `seed`, so that the same inputs give the same image.
fn seeded_guid(seed: u64) -> [u8; 16] {
    let mut x = seed | 1;
    let mut out = [0u8; 16];
    for b in out.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 24) as u8;
    }
    out[7] = (out[7] & 0x0F) | 0x40;
    out[8] = (out[8] & 0x3F) | 0x80;
    out
}

/// What goes on the EFI system partition.
pub struct EspContents<'a> {
    /// The loader (a PE/COFF UEFI application).
    pub loader: &'a [u8],
    /// File name of the loader under `\EFI\BOOT` (`BOOTX64.EFI` or `BOOTAA64.EFI`).
    pub loader_name: &'a str,
    /// The kernel ELF.
    pub kernel: &'a [u8],
    /// The kernel command line.
    pub cmdline: &'a str,
}

/// The FAT32 volume of the partition, in memory.
fn fat_volume(contents: &EspContents<'_>) -> Result<Vec<u8>, String> {
    let sectors = LAST_LBA - FIRST_LBA + 1;
    let mut volume = Cursor::new(vec![0u8; (sectors * SECTOR) as usize]);
    let options = fatfs::FormatVolumeOptions::new()
        .fat_type(fatfs::FatType::Fat32)
        .bytes_per_cluster(512)
        .volume_label(*b"PORTCULLIS ");
    fatfs::format_volume(&mut volume, options).map_err(|e| format!("formatting the EFI system partition: {e}"))?;
    {
        let fs = fatfs::FileSystem::new(&mut volume, fatfs::FsOptions::new())
            .map_err(|e| format!("opening the new EFI system partition: {e}"))?;
        let root = fs.root_dir();
        fn err(what: &str) -> impl FnOnce(std::io::Error) -> String + '_ {
            move |e| format!("writing {what} to the EFI system partition: {e}")
        }
        let boot = root.create_dir("EFI").and_then(|d| d.create_dir("BOOT")).map_err(err("\\EFI\\BOOT"))?;
        boot.create_file(contents.loader_name)
            .and_then(|mut f| f.write_all(contents.loader))
            .map_err(err(contents.loader_name))?;
        let dir = root.create_dir("portcullis").map_err(err("\\portcullis"))?;
        dir.create_file("kernel").and_then(|mut f| f.write_all(contents.kernel)).map_err(err("the kernel"))?;
        dir.create_file("cmdline")
            .and_then(|mut f| f.write_all(contents.cmdline.as_bytes()))
            .map_err(err("the command line"))?;
    }
    Ok(volume.into_inner())
}

/// The protective MBR (UEFI 2.10 §5.2.3): one partition of type 0xEE over the disk.
fn protective_mbr() -> [u8; 512] {
    let mut mbr = [0u8; 512];
    let entry = &mut mbr[446..462];
    entry[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    entry[4] = 0xEE;
    entry[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    entry[8..12].copy_from_slice(&1u32.to_le_bytes());
    entry[12..16].copy_from_slice(&((DISK_SECTORS - 1).min(u64::from(u32::MAX)) as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    mbr
}

/// The partition entry array (one ESP, the rest zero).
fn partition_entries(disk_guid_seed: u64) -> Vec<u8> {
    let mut entries = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    let e = &mut entries[..ENTRY_SIZE as usize];
    e[0..16].copy_from_slice(&ESP_TYPE);
    e[16..32].copy_from_slice(&seeded_guid(disk_guid_seed ^ 0xE5B));
    e[32..40].copy_from_slice(&FIRST_LBA.to_le_bytes());
    e[40..48].copy_from_slice(&LAST_LBA.to_le_bytes());
    for (i, c) in "EFI system partition".encode_utf16().enumerate() {
        e[56 + 2 * i..58 + 2 * i].copy_from_slice(&c.to_le_bytes());
    }
    entries
}

/// A GPT header (UEFI 2.10 §5.3.2) at `my_lba`, pointing at the other copy and its entries.
fn gpt_header(my_lba: u64, alternate_lba: u64, entries_lba: u64, entries: &[u8], disk_guid: [u8; 16]) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&my_lba.to_le_bytes());
    h[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
    h[40..48].copy_from_slice(&(2 + ENTRY_SECTORS).to_le_bytes());
    h[48..56].copy_from_slice(&LAST_LBA.to_le_bytes());
    h[56..72].copy_from_slice(&disk_guid);
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
    h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
    h[88..92].copy_from_slice(&crc32fast::hash(entries).to_le_bytes());
    let crc = crc32fast::hash(&h[..92]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Writes `data` at byte `offset` of `file`, skipping all-zero blocks (the file stays sparse).
fn write_sparse(file: &mut std::fs::File, offset: u64, data: &[u8]) -> std::io::Result<()> {
    const BLOCK: usize = 64 * 1024;
    for (i, chunk) in data.chunks(BLOCK).enumerate() {
        if chunk.iter().any(|&b| b != 0) {
            file.seek(SeekFrom::Start(offset + (i * BLOCK) as u64))?;
            file.write_all(chunk)?;
        }
    }
    Ok(())
}

/// Writes a bootable GPT disk image with one EFI system partition to `path`.
pub fn write(path: &Path, contents: &EspContents<'_>) -> Result<(), String> {
    let volume = fat_volume(contents)?;
    let seed = contents.kernel.len() as u64 ^ ((contents.cmdline.len() as u64) << 32);
    let disk_guid = seeded_guid(seed);
    let entries = partition_entries(seed);
    let io = |e: std::io::Error| format!("writing {}: {e}", path.display());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut file = std::fs::File::create(path).map_err(io)?;
    file.set_len(DISK_SECTORS * SECTOR).map_err(io)?;
    let backup_entries_lba = DISK_SECTORS - 1 - ENTRY_SECTORS;
    write_sparse(&mut file, 0, &protective_mbr()).map_err(io)?;
    write_sparse(&mut file, SECTOR, &gpt_header(1, DISK_SECTORS - 1, 2, &entries, disk_guid)).map_err(io)?;
    write_sparse(&mut file, 2 * SECTOR, &entries).map_err(io)?;
    write_sparse(&mut file, FIRST_LBA * SECTOR, &volume).map_err(io)?;
    write_sparse(&mut file, backup_entries_lba * SECTOR, &entries).map_err(io)?;
    let backup = gpt_header(DISK_SECTORS - 1, 1, backup_entries_lba, &entries, disk_guid);
    write_sparse(&mut file, (DISK_SECTORS - 1) * SECTOR, &backup).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Writes the image that boots `kernel` (built with its UEFI loader) with `cmdline`.
pub fn write_kernel_image(
    arch: crate::target::Arch,
    kernel: &crate::build::Kernel,
    cmdline: &str,
    path: &Path,
) -> Result<(), String> {
    let files = kernel.uefi.as_ref().ok_or("internal: the UEFI loader was not built for this boot")?;
    write(
        path,
        &EspContents { loader: &files.loader, loader_name: arch.uefi_boot_file(), kernel: &files.kernel, cmdline },
    )
}

/// `cargo xtask image`: builds the kernel and the loader for `arch` and writes
/// a bootable image (default `target/portcullis-<arch>.img`).
pub fn build_image(
    arch: crate::target::Arch,
    release: bool,
    cmdline: &str,
    output: Option<std::path::PathBuf>,
) -> Result<(), String> {
    let kernel = crate::build::kernel_for(arch, release, crate::target::Boot::Uefi)?;
    let path = output.unwrap_or_else(|| {
        crate::target::workspace_root().join("target").join(format!("portcullis-{}.img", arch.name()))
    });
    write_kernel_image(arch, &kernel, cmdline, &path)?;
    println!(
        "xtask: wrote {} ({} MiB GPT disk, EFI system partition with {}, the kernel and cmdline \"{cmdline}\")",
        path.display(),
        (DISK_SECTORS * SECTOR) >> 20,
        arch.uefi_boot_file(),
    );
    println!(
        "xtask: write it to a USB stick with: sudo dd if={} of=/dev/sdX bs=1M conv=fsync (see docs/hardware.md)",
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("esp.img");
        let kernel: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let contents =
            EspContents { loader: b"MZ-loader", loader_name: "BOOTX64.EFI", kernel: &kernel, cmdline: "init=demo" };
        write(&path, &contents).unwrap();
        path
    }

    #[test]
    fn gpt_headers_and_entries_check_out() {
        let dir = std::env::temp_dir().join(format!("portcullis-image-test-{}", std::process::id()));
        let path = sample(&dir);
        let disk = std::fs::read(&path).unwrap();
        assert_eq!(disk.len() as u64, DISK_SECTORS * SECTOR);
        assert_eq!(&disk[510..512], &[0x55, 0xAA]);
        assert_eq!(disk[446 + 4], 0xEE, "protective MBR");
        for (lba, other) in [(1u64, DISK_SECTORS - 1), (DISK_SECTORS - 1, 1)] {
            let h = &disk[(lba * SECTOR) as usize..(lba * SECTOR + 92) as usize];
            assert_eq!(&h[0..8], b"EFI PART");
            let mut copy = h.to_vec();
            copy[16..20].fill(0);
            assert_eq!(u32::from_le_bytes(h[16..20].try_into().unwrap()), crc32fast::hash(&copy), "header CRC");
            assert_eq!(u64::from_le_bytes(h[24..32].try_into().unwrap()), lba);
            assert_eq!(u64::from_le_bytes(h[32..40].try_into().unwrap()), other);
            let at = u64::from_le_bytes(h[72..80].try_into().unwrap()) * SECTOR;
            let entries = &disk[at as usize..(at + ENTRIES * ENTRY_SIZE) as usize];
            assert_eq!(u32::from_le_bytes(h[88..92].try_into().unwrap()), crc32fast::hash(entries), "entries CRC");
            assert_eq!(&entries[0..16], &ESP_TYPE);
            assert_eq!(u64::from_le_bytes(entries[32..40].try_into().unwrap()), FIRST_LBA);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_partition_holds_the_files() {
        let dir = std::env::temp_dir().join(format!("portcullis-image-files-{}", std::process::id()));
        let path = sample(&dir);
        let disk = std::fs::read(&path).unwrap();
        let volume = disk[(FIRST_LBA * SECTOR) as usize..((LAST_LBA + 1) * SECTOR) as usize].to_vec();
        let fs = fatfs::FileSystem::new(Cursor::new(volume), fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat32);
        let read = |p: &str| {
            let mut v = Vec::new();
            fs.root_dir().open_file(p).unwrap().read_to_end(&mut v).unwrap();
            v
        };
        assert_eq!(read("EFI/BOOT/BOOTX64.EFI"), b"MZ-loader");
        assert_eq!(read("portcullis/cmdline"), b"init=demo");
        let kernel = read("portcullis/kernel");
        assert_eq!(kernel.len(), 300_000);
        assert!(kernel.iter().enumerate().all(|(i, &b)| b == (i as u32 * 7) as u8));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
