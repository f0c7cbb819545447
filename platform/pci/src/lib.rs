//! PCI configuration access, enumeration, BAR assignment and capabilities.
#![cfg_attr(not(test), no_std)]
