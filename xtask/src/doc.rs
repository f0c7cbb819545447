//! `cargo xtask doc`: the guide and the API documentation, with every
//! warning an error.
//!
//! - The guide (`docs/guide/`, an mdBook) is built into `target/guide/`
//!   (open `target/guide/index.html`). mdBook is not in Debian bookworm (nor
//!   its backports), so the pinned [`MDBOOK_VERSION`] is installed from
//!   crates.io with `cargo install --locked` into `target/tools/` the first
//!   time (about six minutes on two cores), unless an `mdbook` of that version
//!   is already on `PATH`. Any line mdBook logs at WARN or ERROR fails the
//!   command.
//! - The API docs: `cargo doc --no-deps` with `RUSTDOCFLAGS="-D warnings"`
//!   over every crate of the workspace, each group for the target it builds
//!   for ([`API_GROUPS`]): the host crates (the workspace's default members)
//!   into `target/doc/`, the bare-metal ones into `target/<triple>/doc/`.
//!   Any `warning:` cargo or rustc prints fails the command too.
//!
//! [`check_guide`] is the guide's own consistency check, which a host test
//! runs (`cargo xtask test --host`): every chapter of `SUMMARY.md` exists,
//! every image a chapter shows exists and is well-formed XML, and every shell
//! command a lesson chapter shows is a line of that lesson's script.

use crate::target::workspace_root;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The mdBook release the guide is built with (`cargo install mdbook --version`).
pub const MDBOOK_VERSION: &str = "0.5.4";

/// Crate groups for `cargo doc`: the target (`None`: the host) and the
/// packages (`None`: the workspace's default members). The bare-metal crates
/// build only for their targets; each is documented once, on the target the
/// xtask builds it for (the crates shared by both kernels on x86_64).
pub const API_GROUPS: &[(Option<&str>, Option<&[&str]>)] = &[
    (None, None),
    (
        Some("x86_64-unknown-none"),
        Some(&[
            "boot-x86_64",
            "board-pc",
            "board-common",
            "userlib",
            "edu-driver",
            "nvme-driver",
            "virtio-blk-driver",
            "user-programs",
        ]),
    ),
    (Some("aarch64-unknown-none-softfloat"), Some(&["boot-aarch64", "board-virt"])),
    (Some("x86_64-unknown-uefi"), Some(&["boot-uefi"])),
];

fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| workspace_root().join("target"))
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// True when `program --version` names [`MDBOOK_VERSION`].
fn is_pinned_mdbook(program: &Path) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(MDBOOK_VERSION))
}

/// The pinned mdBook: one on `PATH`, else `target/tools/bin/mdbook`,
/// installed there from crates.io when missing.
fn mdbook() -> Result<PathBuf, String> {
    let on_path = PathBuf::from("mdbook");
    if is_pinned_mdbook(&on_path) {
        return Ok(on_path);
    }
    let root = target_dir().join("tools");
    let local = root.join("bin").join("mdbook");
    if is_pinned_mdbook(&local) {
        return Ok(local);
    }
    eprintln!("xtask: installing mdBook {MDBOOK_VERSION} into {} (once)", root.display());
    let status = Command::new(cargo())
        .current_dir(workspace_root())
        .args(["install", "mdbook", "--locked", "--version", MDBOOK_VERSION, "--no-default-features"])
        .args(["--features", "search", "--root"])
        .arg(&root)
        .status()
        .map_err(|e| format!("cannot run cargo install: {e}"))?;
    if !status.success() || !is_pinned_mdbook(&local) {
        return Err(format!("installing mdBook {MDBOOK_VERSION} with cargo install failed"));
    }
    Ok(local)
}

/// Lines of tool output that count as warnings.
fn warnings(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with("warning") || t.starts_with("error") || l.contains(" WARN ") || l.contains(" ERROR ")
        })
        .collect()
}

/// Runs `cmd`, echoing its output; fails on a non-zero exit or any warning.
fn run_checked(what: &str, cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("cannot run {what}: {e}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprint!("{text}");
    let found = warnings(&text);
    if !out.status.success() {
        return Err(format!("{what} failed ({})", out.status));
    }
    if !found.is_empty() {
        return Err(format!("{what} printed {} warning line(s), the first: {}", found.len(), found[0].trim()));
    }
    Ok(())
}

/// Builds the guide into `target/guide/`.
fn guide() -> Result<(), String> {
    let root = workspace_root();
    let problems = check_guide(&root.join("docs/guide"));
    if !problems.is_empty() {
        return Err(format!("the guide is inconsistent:\n  {}", problems.join("\n  ")));
    }
    let mdbook = mdbook()?;
    let dest = target_dir().join("guide");
    eprintln!("xtask: building the guide into {}", dest.display());
    run_checked(
        "mdbook build",
        Command::new(mdbook).current_dir(&root).arg("build").arg("docs/guide").arg("--dest-dir").arg(&dest),
    )?;
    eprintln!("xtask: guide: {}", dest.join("index.html").display());
    Ok(())
}

/// `cargo doc --no-deps` for every group of [`API_GROUPS`].
fn api() -> Result<(), String> {
    for (target, packages) in API_GROUPS {
        let mut cmd = Command::new(cargo());
        cmd.current_dir(workspace_root()).env("RUSTDOCFLAGS", "-D warnings").args(["doc", "--no-deps"]);
        if let Some(t) = target {
            cmd.args(["--target", t]);
        }
        for p in packages.iter().flat_map(|p| p.iter()) {
            cmd.args(["--package", p]);
        }
        let what = format!("cargo doc ({})", target.unwrap_or("host crates"));
        eprintln!("xtask: {what}");
        run_checked(&what, &mut cmd)?;
    }
    Ok(())
}

/// `cargo xtask doc`: the guide and the API docs (both unless one is chosen).
pub fn run(guide_only: bool, api_only: bool) -> Result<(), String> {
    let start = std::time::Instant::now();
    if !api_only {
        guide()?;
    }
    if !guide_only {
        api()?;
    }
    eprintln!("xtask: doc: done in {:.0} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// The chapter files `SUMMARY.md` links to (relative to `src/`).
fn summary_chapters(summary: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in summary.lines() {
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            if let Some(end) = rest.find(')') {
                let target = &rest[..end];
                if !target.is_empty() && !target.contains("://") {
                    out.push(target.to_owned());
                }
                rest = &rest[end..];
            }
        }
    }
    out
}

/// Image paths a chapter shows (`![..](path)` and `<img src="path">`), as written.
fn chapter_images(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("![") {
        rest = &rest[i + 2..];
        if let Some(j) = rest.find("](") {
            let after = &rest[j + 2..];
            if let Some(end) = after.find([')', ' ']) {
                out.push(after[..end].to_owned());
            }
        }
    }
    let mut rest = text;
    while let Some(i) = rest.find("<img src=\"") {
        rest = &rest[i + 10..];
        if let Some(end) = rest.find('"') {
            out.push(rest[..end].to_owned());
        }
    }
    out
}

/// Problems in an XML document (it must parse, and its root be `<svg>`);
/// none for a good one.
pub fn xml_problems(text: &str) -> Vec<String> {
    match roxmltree::Document::parse(text) {
        Err(e) => vec![format!("not well-formed XML: {e}")],
        Ok(doc) if doc.root_element().tag_name().name() != "svg" => {
            vec![format!("the root element is <{}>, not <svg>", doc.root_element().tag_name().name())]
        }
        Ok(_) => Vec::new(),
    }
}

/// The shell commands a lesson chapter shows: the lines after a
/// `portcullis> ` prompt in its code blocks.
fn shown_commands(chapter: &str) -> Vec<String> {
    chapter.lines().filter_map(|l| l.strip_prefix("portcullis> ")).map(|c| c.trim().to_owned()).collect()
}

/// The script a lesson chapter replays: the `docs/lessons/NAME.txt` it names
/// in an HTML comment `<!-- lesson: docs/lessons/NAME.txt -->`.
fn lesson_script(chapter: &str) -> Option<&str> {
    let at = chapter.find("<!-- lesson: ")?;
    let rest = &chapter[at + 13..];
    Some(rest[..rest.find(" -->")?].trim())
}

/// The links a chapter makes to other chapters: `](file.md)` or
/// `](file.md#anchor)` or `](#anchor)`, as (file, anchor) with an empty file
/// for the chapter itself.
fn chapter_links(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = &rest[..end];
        if !target.contains("://") && !target.contains(' ') {
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            if file.ends_with(".md") || (file.is_empty() && !anchor.is_empty()) {
                out.push((file.to_owned(), anchor.to_owned()));
            }
        }
    }
    out
}

/// The ids mdBook gives a chapter's headings: the heading's text without
/// markup, lower-cased, spaces turned into `-`, everything but letters,
/// digits, `-` and `_` dropped.
fn heading_ids(text: &str) -> Vec<String> {
    let mut in_code = false;
    let mut ids = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let id: String = title
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_lowercase().next().unwrap_or(c)),
                _ => None,
            })
            .collect();
        ids.push(id);
    }
    ids
}

/// Everything wrong with the guide under `book` (`docs/guide`): chapters
/// `SUMMARY.md` names that do not exist, images a chapter shows that do not
/// exist or are not well-formed XML, links to chapters or headings that do
/// not exist, shell commands a lesson chapter shows that its lesson does not
/// type, and lessons no chapter walks through.
pub fn check_guide(book: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let src = book.join("src");
    let summary = match std::fs::read_to_string(src.join("SUMMARY.md")) {
        Ok(s) => s,
        Err(e) => return vec![format!("{}: {e}", src.join("SUMMARY.md").display())],
    };
    if !book.join("book.toml").is_file() {
        problems.push(format!("{} is missing", book.join("book.toml").display()));
    }
    let root = book.parent().and_then(Path::parent).unwrap_or(book);
    let mut lessons_walked = Vec::new();
    for chapter in summary_chapters(&summary) {
        let path = src.join(&chapter);
        let Ok(text) = std::fs::read_to_string(&path) else {
            problems.push(format!("SUMMARY.md names {chapter}, which does not exist"));
            continue;
        };
        let dir = path.parent().unwrap_or(&src);
        for image in chapter_images(&text) {
            let file = dir.join(&image);
            match std::fs::read_to_string(&file) {
                Err(_) => problems.push(format!("{chapter} shows {image}, which does not exist")),
                Ok(svg) => {
                    for p in xml_problems(&svg) {
                        problems.push(format!("{image}: {p}"));
                    }
                }
            }
        }
        for (file, anchor) in chapter_links(&text) {
            let target = if file.is_empty() { path.clone() } else { dir.join(&file) };
            match std::fs::read_to_string(&target) {
                Err(_) => problems.push(format!("{chapter} links to {file}, which does not exist")),
                Ok(t) if !anchor.is_empty() && !heading_ids(&t).contains(&anchor) => {
                    problems.push(format!("{chapter} links to {file}#{anchor}, a heading that does not exist"))
                }
                Ok(_) => {}
            }
        }
        if let Some(script) = lesson_script(&text) {
            lessons_walked.push(script.to_owned());
            match std::fs::read_to_string(root.join(script)) {
                Err(_) => problems.push(format!("{chapter} walks through {script}, which does not exist")),
                Ok(lesson) => {
                    let typed: Vec<&str> = lesson.lines().map(str::trim).collect();
                    for cmd in shown_commands(&text) {
                        if cmd != "exit" && !typed.contains(&cmd.as_str()) {
                            problems.push(format!("{chapter} shows `{cmd}`, which {script} does not type"));
                        }
                    }
                }
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir(root.join("docs/lessons")) {
        for entry in dir.flatten() {
            let name = format!("docs/lessons/{}", entry.file_name().to_string_lossy());
            if name.ends_with(".txt") && !lessons_walked.contains(&name) {
                problems.push(format!("no chapter walks through {name} (`<!-- lesson: {name} -->`)"));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guide_is_consistent() {
        let book = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/guide");
        let problems = check_guide(&book);
        assert!(problems.is_empty(), "the guide has problems:\n  {}", problems.join("\n  "));
    }

    #[test]
    fn a_broken_guide_is_caught() {
        let dir = std::env::temp_dir().join(format!("portcullis-guide-check-{}", std::process::id()));
        let src = dir.join("docs/guide/src");
        std::fs::create_dir_all(src.join("images")).unwrap();
        std::fs::create_dir_all(dir.join("docs/lessons")).unwrap();
        std::fs::write(dir.join("docs/guide/book.toml"), "[book]\n").unwrap();
        std::fs::write(dir.join("docs/lessons/one.txt"), "# a lesson\nunits\nclaim edu\n").unwrap();
        std::fs::write(src.join("SUMMARY.md"), "- [One](one.md)\n- [Gone](gone.md)\n").unwrap();
        std::fs::write(src.join("images/bad.svg"), "<svg><g></svg>").unwrap();
        std::fs::write(
            src.join("one.md"),
            "<!-- lesson: docs/lessons/one.txt -->\n![a](images/bad.svg)\n![b](images/none.svg)\n\
             ```text\nportcullis> units\nportcullis> bind edu\nportcullis> exit\n```\n\
             [ok](#a-lesson) [no](#nothing) [gone](gone.md#x)\n\n## A lesson\n",
        )
        .unwrap();
        let problems = check_guide(&dir.join("docs/guide"));
        let _ = std::fs::remove_dir_all(&dir);
        let has = |s: &str| problems.iter().any(|p| p.contains(s));
        assert!(has("gone.md"), "{problems:?}");
        assert!(has("bad.svg: not well-formed XML"), "{problems:?}");
        assert!(has("none.svg, which does not exist"), "{problems:?}");
        assert!(has("`bind edu`"), "{problems:?}");
        assert!(has("links to #nothing"), "{problems:?}");
        assert!(has("links to gone.md"), "{problems:?}");
        assert!(!has("`units`") && !has("`exit`") && !has("#a-lesson"), "{problems:?}");
        assert_eq!(problems.len(), 6, "{problems:?}");
    }

    #[test]
    fn heading_ids_follow_mdbook() {
        let ids = heading_ids(
            "# Intro\n```\n# not a heading\n```\n## Registers (spec §3.4)\n### `hw_info`: the unit's raw registers\n",
        );
        assert_eq!(ids, ["intro", "registers-spec-34", "hw_info-the-units-raw-registers"]);
    }

    #[test]
    fn xml_checks() {
        let good = "<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\"><text>x &amp; y</text></svg>";
        assert!(xml_problems(good).is_empty());
        assert!(!xml_problems("<svg><text>a & b</text></svg>").is_empty());
        assert!(!xml_problems("<svg></svg><svg></svg>").is_empty());
        assert!(!xml_problems("<svg><g>").is_empty());
        assert!(!xml_problems("<html></html>").is_empty());
    }

    #[test]
    fn tool_warnings_are_seen() {
        let out = "   Compiling x\nwarning: unresolved link to `Foo`\n 2026-12-03 WARN mdbook::x: oops\n    Finished";
        assert_eq!(warnings(out).len(), 2);
        assert!(warnings("   Documenting abi v0.1.0\n    Finished `dev` profile").is_empty());
    }
}
