//! The user programs packed into the kernel image, and `run --init`.
//!
//! Every binary of `user/programs` is packed: the names come from the files
//! cargo turns into binaries there (`src/bin/NAME.rs` and `src/bin/NAME/main.rs`,
//! cargo's automatic target discovery; `user/programs/Cargo.toml` lists none by
//! hand), sorted by name, so adding a file is all it takes and the image's
//! order does not depend on the file system.

use crate::target::workspace_root;
use std::path::{Path, PathBuf};

/// `user/programs/src/bin`, where cargo discovers the programs.
pub fn bin_dir() -> PathBuf {
    workspace_root().join("user").join("programs").join("src").join("bin")
}

/// The names of the user programs, sorted.
pub fn names() -> Result<Vec<String>, String> {
    names_in(&bin_dir())
}

/// The binaries cargo discovers in `dir` (a `src/bin` directory), sorted by name.
pub fn names_in(dir: &Path) -> Result<Vec<String>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let path = entry.path();
        let name = if path.is_dir() {
            if !path.join("main.rs").is_file() {
                continue;
            }
            entry.file_name().to_string_lossy().into_owned()
        } else if path.extension().is_some_and(|x| x == "rs") {
            match path.file_stem() {
                Some(stem) => stem.to_string_lossy().into_owned(),
                None => continue,
            }
        } else {
            continue;
        };
        // The kernel command line separates words by spaces and `init=` names by commas.
        if name.is_empty() || name.contains(|c: char| c == ',' || c == '=' || c.is_whitespace()) {
            return Err(format!(
                "{}: a user program's name cannot contain ',', '=' or spaces (it goes on the kernel command line)",
                path.display()
            ));
        }
        names.push(name);
    }
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(format!("no user programs in {}", dir.display()));
    }
    Ok(names)
}

/// Checks `--init NAME[,NAME…]` against the programs that exist and returns
/// the kernel command-line word (`init=NAME,NAME`), names in the given order.
pub fn init_word(spec: &str, known: &[String]) -> Result<String, String> {
    let names: Vec<&str> = spec.split(',').map(str::trim).collect();
    if names.iter().any(|n| n.is_empty()) {
        return Err(format!("--init {spec:?}: empty program name (the form is --init NAME[,NAME…])"));
    }
    let unknown: Vec<&str> = names.iter().copied().filter(|n| !known.iter().any(|k| k == n)).collect();
    if !unknown.is_empty() {
        return Err(format!(
            "--init: no user program named {}; the programs are: {}",
            unknown.join(", "),
            known.join(", ")
        ));
    }
    Ok(format!("init={}", names.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_in_src_bin_is_packed_sorted() {
        let names = names().unwrap();
        let mut files: Vec<String> = std::fs::read_dir(bin_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "rs") || p.join("main.rs").is_file())
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(names, files);
        assert!(names.windows(2).all(|w| w[0] < w[1]), "not sorted: {names:?}");
        for needed in ["demo", "hello", "hw-vtd", "hw-smmuv3", "test-syscalls"] {
            assert!(names.iter().any(|n| n == needed), "{needed} missing from {names:?}");
        }
    }

    #[test]
    fn cargo_builds_exactly_the_discovered_programs() {
        // A hand-kept [[bin]] list (or autobins = false) would be a second list
        // that can disagree with what the xtask packs.
        let manifest = std::fs::read_to_string(workspace_root().join("user/programs/Cargo.toml")).unwrap();
        let lines: Vec<&str> = manifest.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
        assert!(!lines.iter().any(|l| l.starts_with("[[bin]]")), "user/programs/Cargo.toml lists binaries by hand");
        assert!(!lines.iter().any(|l| l.replace(' ', "").starts_with("autobins=false")));
    }

    #[test]
    fn discovery_follows_cargos_rules() {
        let dir = std::env::temp_dir().join(format!("xtask-programs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("b")).unwrap();
        std::fs::create_dir_all(dir.join("helpers")).unwrap();
        for f in ["zeta.rs", "alpha.rs", "b/main.rs", "helpers/util.rs", "notes.txt"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        assert_eq!(names_in(&dir).unwrap(), ["alpha", "b", "zeta"]);
        std::fs::write(dir.join("bad name.rs"), "").unwrap();
        assert!(names_in(&dir).unwrap_err().contains("cannot contain"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(names_in(&dir).is_err());
    }

    #[test]
    fn init_lists_are_checked() {
        let known: Vec<String> = ["demo", "hello", "spin"].map(String::from).to_vec();
        assert_eq!(init_word("demo", &known).unwrap(), "init=demo");
        assert_eq!(init_word("spin,hello", &known).unwrap(), "init=spin,hello");
        assert_eq!(init_word("hello, demo", &known).unwrap(), "init=hello,demo");
        assert_eq!(init_word("hello,hello", &known).unwrap(), "init=hello,hello");
        let e = init_word("hello,nope,gone", &known).unwrap_err();
        assert!(e.contains("nope, gone") && e.contains("demo, hello, spin"), "{e}");
        assert!(init_word("", &known).unwrap_err().contains("empty"));
        assert!(init_word("hello,", &known).unwrap_err().contains("empty"));
    }
}
