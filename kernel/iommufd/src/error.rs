//! The errno of a failure: an IOMMU unit's error, or a full heap.

use abi::Errno;
use fallible::AllocError;

/// A full heap, as an errno.
pub(crate) fn nomem(_: AllocError) -> Errno {
    Errno::ENOMEM
}

/// An IOMMU error as an errno.
pub fn errno(e: iommu::Error) -> Errno {
    match e {
        iommu::Error::NotSupported(_) => Errno::EOPNOTSUPP,
        iommu::Error::NoMemory => Errno::ENOMEM,
        iommu::Error::NoDomainIds => Errno::ENOSPC,
        iommu::Error::NoSuchDomain(_) | iommu::Error::NoSuchDevice(_) => Errno::ENOENT,
        iommu::Error::Busy(_) => Errno::EBUSY,
        iommu::Error::NotPaging(_) => Errno::EINVAL,
        iommu::Error::OutOfAperture { .. } => Errno::ERANGE,
        iommu::Error::Map(io_pgtable::Error::AlreadyMapped(_)) => Errno::EEXIST,
        iommu::Error::Map(_) => Errno::EINVAL,
        iommu::Error::Hardware(_) => Errno::EIO,
        iommu::Error::InvalidData(_) => Errno::EINVAL,
    }
}
