//! Parsers for the ACPI tables that describe IOMMUs: DMAR, IVRS, IORT, VIOT (plus MADT and MCFG).
#![cfg_attr(not(test), no_std)]
