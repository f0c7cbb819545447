//! One I/O page-table engine for every IOMMU page-table format.
#![cfg_attr(not(test), no_std)]
